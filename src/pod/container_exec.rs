//! ExecSync: the streaming exec path (`stream_backend.rs`, one path for
//! both, as containerd's CRI runs both through `execInternal`) with the
//! output kept in memory up to a cap, a timeout, and the exit code.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use super::{PodError, PodManager, Result};
use crate::stream::SessionIo;

/// At most this much of each stream is kept (as containerd's 16 MiB cap).
const MAX_OUTPUT: usize = 16 << 20;

/// What ExecSync returns.
#[derive(Debug, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// An output stream kept in memory: the first `cap` bytes, the rest
/// accepted and dropped (the process never blocks on a full buffer).
#[derive(Clone)]
struct Captured {
    bytes: Arc<Mutex<Vec<u8>>>,
    cap: usize,
}

impl Captured {
    fn new(cap: usize) -> Self {
        Self {
            bytes: Arc::default(),
            cap,
        }
    }

    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *super::lock(&self.bytes))
    }
}

impl tokio::io::AsyncWrite for Captured {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut bytes = super::lock(&self.bytes);
        // Exactly up to the cap: a push past it would double the buffer's
        // capacity.
        let room = self.cap.saturating_sub(bytes.len());
        bytes.extend_from_slice(&buf[..buf.len().min(room)]);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl PodManager {
    /// Runs `cmd` in the container and returns its output and exit code.
    /// `timeout` 0 means no limit; past it the process is killed (the
    /// exec path's guard kills and deletes it) and the call fails with
    /// DeadlineExceeded.
    pub async fn exec_sync(&self, id: &str, cmd: Vec<String>, timeout: i64) -> Result<ExecOutput> {
        let stdout = Captured::new(MAX_OUTPUT);
        let stderr = Captured::new(MAX_OUTPUT);
        let io = SessionIo {
            tty: false,
            stdin: None,
            stdout: Some(Box::new(stdout.clone())),
            stderr: Some(Box::new(stderr.clone())),
            resize: None,
        };
        let run = self.stream_exec(id, cmd.clone(), io);
        let status = if timeout > 0 {
            tokio::time::timeout(Duration::from_secs(timeout as u64), run)
                .await
                .map_err(|_| {
                    PodError::Timeout(format!("command {cmd:?} did not finish within {timeout}s"))
                })??
        } else {
            run.await?
        };
        Ok(ExecOutput {
            stdout: stdout.take(),
            stderr: stderr.take(),
            exit_code: status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn output_past_the_cap_is_accepted_and_dropped() {
        let c = Captured::new(5);
        let mut w = c.clone();
        w.write_all(b"abc").await.unwrap();
        w.write_all(b"defgh").await.unwrap();
        w.write_all(b"ijk").await.unwrap();
        assert_eq!(c.take(), b"abcde");
    }
}
