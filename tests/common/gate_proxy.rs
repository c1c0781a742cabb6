//! A TCP proxy on 127.0.0.1 in front of the test registry that holds back
//! the first blob request until the test releases it: lets a test act
//! while a pull is certainly in flight, without timing guesses.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

#[derive(Default)]
struct GateState {
    blob_requested: bool,
    released: bool,
}

#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

pub struct GateProxy {
    /// `127.0.0.1:<port>` of the proxy.
    pub addr: String,
    gate: Arc<Gate>,
    stopping: Arc<AtomicBool>,
}

impl GateProxy {
    pub fn start(upstream: &str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let gate = Arc::new(Gate::default());
        let stopping = Arc::new(AtomicBool::new(false));
        let upstream = upstream.to_owned();
        {
            let gate = Arc::clone(&gate);
            let stopping = Arc::clone(&stopping);
            thread::spawn(move || {
                for client in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(&upstream) else {
                        continue;
                    };
                    let gate = Arc::clone(&gate);
                    thread::spawn(move || forward(client, server, gate));
                }
            });
        }
        Ok(Self {
            addr,
            gate,
            stopping,
        })
    }

    /// Blocks until a blob request reached the proxy (and is held).
    pub fn wait_blob_requested(&self) -> Result<()> {
        let deadline = Instant::now() + super::berthd::PATIENCE;
        let mut state = self.gate.state.lock().unwrap();
        while !state.blob_requested {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no blob was requested through the proxy");
            }
            state = self.gate.changed.wait_timeout(state, left).unwrap().0;
        }
        Ok(())
    }

    /// Lets every held and future request through.
    pub fn release(&self) {
        self.gate.state.lock().unwrap().released = true;
        self.gate.changed.notify_all();
    }
}

impl Drop for GateProxy {
    fn drop(&mut self) {
        self.release();
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees `stopping`.
        let _ = TcpStream::connect(&self.addr);
    }
}

fn forward(client: TcpStream, server: TcpStream, gate: Arc<Gate>) {
    let (Ok(mut client_r), Ok(mut server_w)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let (mut server_r, mut client_w) = (server, client);
    let up = thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if buf[..n].windows(7).any(|w| w == b"/blobs/") {
                let mut state = gate.state.lock().unwrap();
                state.blob_requested = true;
                gate.changed.notify_all();
                while !state.released {
                    state = gate
                        .changed
                        .wait_timeout(state, Duration::from_secs(1))
                        .unwrap()
                        .0;
                }
            }
            if server_w.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = server_w.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut server_r, &mut client_w);
    let _ = client_w.shutdown(Shutdown::Write);
    let _ = up.join();
}
