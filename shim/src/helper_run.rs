//! Running a helper program (CRIU) from the shim. The shim is a child
//! subreaper whose reaper thread collects every child (`waitpid(-1)`), so
//! `Command::output` would find its child already reaped (ECHILD). Here
//! the child is registered before the reaper can see it, and its exit
//! status comes back from the reaper.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::sync::mpsc::{Sender, channel};

use crate::sync::Lock;

static WAITERS: Mutex<Option<HashMap<i32, Sender<u32>>>> = Mutex::new(None);

/// The reaper reaped `pid`, which no container process is: a helper's
/// status goes to its waiter. Returns whether `pid` was a helper.
pub fn exited(pid: i32, status: u32) -> bool {
    let tx = WAITERS.locked().as_mut().and_then(|w| w.remove(&pid));
    match tx {
        Some(tx) => {
            let _ = tx.send(status);
            true
        }
        None => false,
    }
}

/// Runs `cmd` to completion, its stdout and stderr captured. `children_added`
/// wakes the reaper (it parks while the shim has no children).
pub fn output(cmd: &mut Command, children_added: &dyn Fn()) -> std::io::Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (tx, rx) = channel();
    let mut child = {
        // Held across spawn and registration: the reaper's `exited` waits
        // for it, so the status cannot arrive before the waiter exists.
        let mut w = WAITERS.locked();
        let child = cmd.spawn()?;
        w.get_or_insert_with(HashMap::new)
            .insert(child.id() as i32, tx);
        child
    };
    children_added();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let err = child.stderr.take();
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut e) = err {
            let _ = e.read_to_end(&mut buf);
        }
        buf
    });
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_end(&mut stdout);
    }
    if let Ok(b) = err_reader.join() {
        stderr = b;
    }
    let code = rx
        .recv()
        .map_err(|_| std::io::Error::other("the reaper dropped the helper's exit status"))?;
    // The reaper reports 128+signal for a signal death, else the exit code.
    let status = if code > 128 {
        ExitStatus::from_raw((code - 128) as i32)
    } else {
        ExitStatus::from_raw((code as i32) << 8)
    };
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}
