//! The transport-independent part of an exec or attach session: the pipes
//! between a transport and the backend, and running the backend.

use std::sync::Arc;

use tokio::io::DuplexStream;
use tokio::sync::mpsc;

use super::backend::{SessionIo, StreamBackend, TerminalSize};
use super::status::Outcome;

/// Bytes each stdio pipe holds between the transport and the backend.
pub const PIPE_BYTES: usize = 32 * 1024;
/// Resize events queued before the transport waits.
const RESIZE_QUEUE: usize = 4;

/// What runs in the container.
#[derive(Debug, Clone)]
pub enum Target {
    Exec {
        container_id: String,
        cmd: Vec<String>,
    },
    Attach {
        container_id: String,
    },
}

/// Which streams the CRI request asked for.
#[derive(Debug, Clone, Copy)]
pub struct Streams {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// The transport's ends of the session pipes.
pub struct TransportEnds {
    /// Write the client's stdin here; drop (or shut down) for EOF.
    pub stdin: Option<DuplexStream>,
    /// Read what goes to the client.
    pub stdout: Option<DuplexStream>,
    pub stderr: Option<DuplexStream>,
    pub resize: Option<mpsc::Sender<TerminalSize>>,
}

/// Makes the pipes for a session whose client opened the given streams.
pub fn pipes(
    tty: bool,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    resize: bool,
) -> (SessionIo, TransportEnds) {
    fn pair(on: bool) -> (Option<DuplexStream>, Option<DuplexStream>) {
        if on {
            let (a, b) = tokio::io::duplex(PIPE_BYTES);
            (Some(a), Some(b))
        } else {
            (None, None)
        }
    }
    let (in_b, in_t) = pair(stdin);
    let (out_b, out_t) = pair(stdout);
    let (err_b, err_t) = pair(stderr && !tty);
    let (resize_tx, resize_rx) = if resize && tty {
        let (tx, rx) = mpsc::channel(RESIZE_QUEUE);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let io = SessionIo {
        tty,
        stdin: in_b.map(|p| Box::new(p) as _),
        stdout: out_b.map(|p| Box::new(p) as _),
        stderr: err_b.map(|p| Box::new(p) as _),
        resize: resize_rx,
    };
    let ends = TransportEnds {
        stdin: in_t,
        stdout: out_t,
        stderr: err_t,
        resize: resize_tx,
    };
    (io, ends)
}

/// Runs the backend for `target` and says how it ended.
pub async fn run(backend: Arc<dyn StreamBackend>, target: Target, io: SessionIo) -> Outcome {
    match target {
        Target::Exec { container_id, cmd } => {
            match backend.exec(container_id.clone(), cmd, io).await {
                Ok(code) => Outcome::Exited(code),
                Err(e) => {
                    tracing::warn!(container = %container_id, error = %e, "exec failed");
                    Outcome::Failed(e.to_string())
                }
            }
        }
        Target::Attach { container_id } => match backend.attach(container_id.clone(), io).await {
            Ok(()) => Outcome::Attached,
            Err(e) => {
                tracing::warn!(container = %container_id, error = %e, "attach failed");
                Outcome::Failed(e.to_string())
            }
        },
    }
}
