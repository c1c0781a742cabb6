//! `Container::start`: one byte into the exec fifo the init waits on.

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::{Container, Result, RuntimeError, state};

pub fn start(c: &Container) -> Result<()> {
    let fifo = state::exec_fifo(&c.state_dir);
    let fd = match nix::fcntl::open(
        &fifo,
        OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => {
            return Err(RuntimeError::NotFound(format!(
                "container {}: not created, or already started",
                c.id
            )));
        }
        // No reader: the init is gone.
        Err(Errno::ENXIO) => {
            state::remove(&c.state_dir);
            return Err(RuntimeError::NotFound(format!(
                "container {}: its init process exited before start",
                c.id
            )));
        }
        Err(e) => {
            return Err(RuntimeError::Sys {
                context: format!("open exec fifo {}", fifo.display()),
                source: e,
            });
        }
    };
    nix::unistd::write(&fd, b"0").map_err(|e| RuntimeError::Sys {
        context: format!("write exec fifo {}", fifo.display()),
        source: e,
    })?;
    let _ = std::fs::remove_file(&fifo);
    Ok(())
}
