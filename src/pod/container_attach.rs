//! Attach: a streaming session joined to a running container's stdio
//! through its pod shim's attach socket (`crate::attach_wire`). The shim
//! fans the output out (the CRI log file keeps being written whatever the
//! attached clients do) and feeds the container's stdin when it was created
//! with stdin open; terminal resizes go through the Task API's ResizePty.

use oci_spec::runtime::Spec;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::{PodError, PodManager, Result};
use crate::attach_wire::{self, AttachRequest};
use crate::stream::{OutputPipe, SessionIo};

impl PodManager {
    /// Joins the session's stdio to the running container `id` until the
    /// container's output ends (it exited) or the shim drops a client too
    /// slow to keep up. Dropping the future detaches.
    pub async fn stream_attach(&self, id: &str, io: SessionIo) -> Result<()> {
        let c = self.running_container(id)?;
        let spec = Spec::load(c.bundle.join("config.json"))
            .map_err(|e| PodError::Shim(format!("read the container's config.json: {e}")))?;
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        let shim = self.shim_of(&c.pod_id).await?;
        let path = attach_wire::socket_path(&shim.address);
        let SessionIo {
            stdin,
            stdout,
            stderr,
            resize,
            ..
        } = io;
        // A terminal merges stderr into stdout.
        let stderr = if terminal { None } else { stderr };
        let sock = UnixStream::connect(&path).await.map_err(|e| {
            PodError::io(
                format!("connect to the attach socket {}", path.display()),
                e,
            )
        })?;
        let (rd, mut wr) = sock.into_split();
        let mut rd = BufReader::new(rd);
        let req = AttachRequest {
            container: c.id.clone(),
            stdin: stdin.is_some(),
            stdout: stdout.is_some(),
            stderr: stderr.is_some(),
        };
        let mut line = serde_json::to_vec(&req).map_err(|e| PodError::Shim(e.to_string()))?;
        line.push(b'\n');
        wr.write_all(&line)
            .await
            .map_err(|e| PodError::io("send the attach request", e))?;
        let mut answer = String::new();
        (&mut rd)
            .take(attach_wire::MAX_REQUEST_LINE as u64)
            .read_line(&mut answer)
            .await
            .map_err(|e| PodError::io("read the attach answer", e))?;
        let answer = answer.trim_end();
        if answer != attach_wire::OK {
            let reason = answer.strip_prefix("error: ").unwrap_or(answer);
            return Err(PodError::FailedPrecondition(format!(
                "attach to container {}: {}",
                c.id,
                if reason.is_empty() {
                    "the shim closed the connection"
                } else {
                    reason
                }
            )));
        }
        tracing::debug!(container = %c.id, terminal, stdin = req.stdin, "attached");

        let output = copy_frames(rd, stdout, stderr);
        let input = async {
            if let Some(mut from) = stdin {
                let _ = tokio::io::copy(&mut from, &mut wr).await;
            }
            // This session's stdin ended (with stdin_once the container's too).
            let _ = wr.shutdown().await;
            // Keep the write half (and so the connection) until the end.
            std::future::pending::<()>().await
        };
        let resizes = async {
            let Some(mut rx) = resize else {
                return std::future::pending::<()>().await;
            };
            while let Some(size) = rx.recv().await {
                let r = shim
                    .resize_pty(&c.id, "", size.width.into(), size.height.into())
                    .await;
                if let Err(e) = r {
                    tracing::debug!(container = %c.id, error = %e, "attach resize failed");
                }
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            r = output => r,
            () = input => Ok(()),
            () = resizes => Ok(()),
        }
    }
}

/// Shim frames → the session's output pipes, until the shim closes the
/// connection. A client that stops reading one stream is not written to
/// any more.
async fn copy_frames(
    mut rd: impl tokio::io::AsyncRead + Unpin,
    mut stdout: Option<OutputPipe>,
    mut stderr: Option<OutputPipe>,
) -> Result<()> {
    let mut buf = Vec::new();
    loop {
        let mut header = [0u8; attach_wire::FRAME_HEADER];
        match rd.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(PodError::io("read from the attach socket", e)),
        }
        let (stream, len) = attach_wire::parse_frame_header(&header);
        buf.resize(len, 0);
        match rd.read_exact(&mut buf).await {
            Ok(_) => {}
            // Cut off mid-frame: the shim dropped a slow client.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(PodError::io("read from the attach socket", e)),
        }
        let pipe = match stream {
            attach_wire::STDOUT => &mut stdout,
            attach_wire::STDERR => &mut stderr,
            _ => continue,
        };
        if let Some(p) = pipe
            && p.write_all(&buf).await.is_err()
        {
            *pipe = None;
        }
    }
    for p in [stdout.as_mut(), stderr.as_mut()].into_iter().flatten() {
        let _ = p.shutdown().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_go_to_their_pipes_until_the_shim_closes() {
        let mut wire = Vec::new();
        for (stream, data) in [
            (attach_wire::STDOUT, &b"out one "[..]),
            (attach_wire::STDERR, b"err"),
            (9, b"unknown streams are skipped"),
            (attach_wire::STDOUT, b"out two"),
        ] {
            wire.extend_from_slice(&attach_wire::frame_header(stream, data.len()));
            wire.extend_from_slice(data);
        }
        // A frame cut off by the shim (it dropped a slow client) ends the copy.
        wire.extend_from_slice(&attach_wire::frame_header(attach_wire::STDOUT, 100));
        wire.extend_from_slice(b"partial");
        let (out_w, mut out_r) = tokio::io::duplex(1024);
        let (err_w, mut err_r) = tokio::io::duplex(1024);
        copy_frames(&wire[..], Some(Box::new(out_w)), Some(Box::new(err_w)))
            .await
            .unwrap();
        let (mut out, mut err) = (String::new(), String::new());
        out_r.read_to_string(&mut out).await.unwrap();
        err_r.read_to_string(&mut err).await.unwrap();
        assert_eq!(out, "out one out two");
        assert_eq!(err, "err");
    }
}
