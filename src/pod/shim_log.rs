//! The shims' own logs in berthd's: each shim writes its log lines to the
//! `log` FIFO in its working directory (the pod's directory), as
//! containerd's shims do for containerd; berthd reads them and logs each
//! line again with the pod's id, at the level the shim gave it.
//!
//! The FIFO is opened for reading (and writing, so that it never reports
//! end-of-file between writers) before the shim starts: the shim's logger
//! opens it for writing, which blocks until a reader exists. A relay ends
//! when the connection to its shim closes; a restarted berthd, or one that
//! reconnects to a live shim, opens the FIFO again and the shim's lines
//! reach it from then on (while nobody reads, the shim's writes fail with
//! EPIPE and are dropped, never blocking it).

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::unix::pipe;

use super::shim_client::ShimClient;

/// The FIFO's name in the shim's working directory (containerd's).
pub(crate) const LOG_FIFO: &str = "log";

/// The longest line relayed; the rest of a longer one is dropped.
const MAX_LINE: usize = 16 * 1024;

/// Makes the pod's log FIFO (if it is not there) and opens it for the
/// relay. Must run before the shim starts (see the module docs).
/// A FIFO already there (a live shim's, or one a crash left) is reused.
pub(crate) fn open(dir: &Path) -> super::Result<pipe::Receiver> {
    let path = dir.join(LOG_FIFO);
    if !path.exists() {
        super::stream_backend::mkfifo(&path)?;
    }
    pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&path)
        .map_err(|e| super::PodError::io(format!("open {}", path.display()), e))
}

/// Relays the lines of `fifo` into berthd's log until `shim`'s connection
/// closes.
pub(crate) fn relay(pod_id: &str, fifo: pipe::Receiver, shim: Arc<ShimClient>) {
    let pod = pod_id.to_owned();
    tokio::spawn(async move {
        let mut lines = BufReader::new(fifo);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let read = tokio::select! {
                r = read_line(&mut lines, &mut buf) => r,
                _ = shim.closed() => break,
            };
            match read {
                Ok(0) | Err(_) => break,
                Ok(_) => log_line(&pod, &String::from_utf8_lossy(&buf)),
            }
        }
    });
}

/// Reads one line into `buf` (at most [`MAX_LINE`] bytes of it kept).
async fn read_line(r: &mut BufReader<pipe::Receiver>, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let n = r.read_until(b'\n', buf).await?;
    buf.truncate(MAX_LINE);
    Ok(n)
}

/// A shim's log line, `time="…" level=info key=value msg="…"`, split into
/// its level and the rest.
fn parse(line: &str) -> (tracing::Level, &str) {
    let line = line.trim_end();
    let level = line
        .split(' ')
        .find_map(|w| w.strip_prefix("level="))
        .map(|l| match l {
            "error" => tracing::Level::ERROR,
            "warn" => tracing::Level::WARN,
            "debug" => tracing::Level::DEBUG,
            "trace" => tracing::Level::TRACE,
            _ => tracing::Level::INFO,
        })
        .unwrap_or(tracing::Level::INFO);
    // The time is berthd's own again: drop the shim's.
    let rest = match line.strip_prefix("time=\"") {
        Some(after) => after.split_once("\" ").map(|(_, r)| r).unwrap_or(after),
        None => line,
    };
    (level, rest)
}

fn log_line(pod: &str, line: &str) {
    let (level, text) = parse(line);
    if text.is_empty() {
        return;
    }
    match level {
        tracing::Level::ERROR => tracing::error!(pod = %pod, shim = %text, "shim log"),
        tracing::Level::WARN => tracing::warn!(pod = %pod, shim = %text, "shim log"),
        tracing::Level::INFO => tracing::info!(pod = %pod, shim = %text, "shim log"),
        tracing::Level::DEBUG => tracing::debug!(pod = %pod, shim = %text, "shim log"),
        tracing::Level::TRACE => tracing::trace!(pod = %pod, shim = %text, "shim log"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shim_line_gives_its_level_and_drops_its_time() {
        let (l, t) = parse("time=\"2026-12-02T06:00:00.1Z\" level=warn container=c1 msg=\"OOM\"\n");
        assert_eq!(l, tracing::Level::WARN);
        assert_eq!(t, "level=warn container=c1 msg=\"OOM\"");
        let (l, t) = parse("no fields at all");
        assert_eq!(l, tracing::Level::INFO);
        assert_eq!(t, "no fields at all");
        assert_eq!(parse("level=error msg=x").0, tracing::Level::ERROR);
        assert_eq!(parse("level=debug msg=x").0, tracing::Level::DEBUG);
    }
}
