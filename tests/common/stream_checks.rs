//! Checks the streaming tests share: the remotecommand status on the error
//! stream, and polling for what a session leaves behind.

use anyhow::{Result, ensure};

use super::berthd::PATIENCE;

/// Polls `cond` until it holds (the patience is generous, not a measure).
pub async fn wait_until(mut cond: impl FnMut() -> bool, what: &str) -> Result<()> {
    let start = std::time::Instant::now();
    while !cond() {
        ensure!(start.elapsed() < PATIENCE, "gave up waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The JSON status a remotecommand session ends with on its error stream.
pub fn status_json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "error stream is not JSON ({e}): {}",
            String::from_utf8_lossy(bytes)
        )
    })
}
