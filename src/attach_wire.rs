//! The shim's attach socket: how berthd joins the live stdio of a running
//! container (CRI Attach). Shared by berthd and `containerd-shim-berth-v2`.
//!
//! A pod's shim listens on `<its ttrpc socket path>.attach` (mode 0600)
//! once it runs a container whose output goes to a `cri-log://` URI.
//! A session:
//!
//! 1. the client sends one line of JSON, an [`AttachRequest`], ending in
//!    `\n` (at most [`MAX_REQUEST_LINE`] bytes);
//! 2. the shim answers `ok\n`, or `error: <reason>\n` and closes;
//! 3. then the client's bytes are the container's stdin (if it asked for
//!    stdin and the container was created with it); a half-close
//!    (`shutdown(SHUT_WR)`) ends this session's stdin; with `stdin_once`
//!    the container then reads EOF;
//! 4. the shim sends the container's output as frames: one byte stream
//!    ([`STDOUT`] or [`STDERR`]; a terminal's output is all [`STDOUT`]),
//!    a big-endian u32 length, the bytes;
//! 5. the shim closes the connection when the container's output ends (it
//!    exited), or when the client reads too slowly for the socket buffer
//!    (the shim never blocks the container nor buffers without bound).
//!
//! The container's stdin is requested at Create with the stdin URI
//! [`stdin_uri`]; terminal resizes go through the Task API's ResizePty.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Appended to the shim's ttrpc socket path.
pub const SOCKET_SUFFIX: &str = ".attach";
/// Scheme of the stdin URI that gives a container a stdin fed by attach sessions.
pub const STDIN_SCHEME: &str = "attach-stdin://";
/// The stdin URI's host part for `stdin_once`.
const ONCE: &str = "once";
/// Longest request line the shim reads.
pub const MAX_REQUEST_LINE: usize = 4096;
/// The answer to an accepted request (followed by `\n`).
pub const OK: &str = "ok";
/// Frame stream ids.
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
/// Bytes before each frame's data.
pub const FRAME_HEADER: usize = 5;

/// What an attach client asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachRequest {
    pub container: String,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// The stdin URI for a container created with stdin open.
pub fn stdin_uri(once: bool) -> String {
    if once {
        format!("{STDIN_SCHEME}{ONCE}")
    } else {
        STDIN_SCHEME.to_owned()
    }
}

/// Parses a request line (without its `\n`) as the shim reads it.
pub fn parse_request(line: &[u8]) -> Result<AttachRequest, String> {
    if line.len() > MAX_REQUEST_LINE {
        return Err("request line too long".into());
    }
    serde_json::from_slice(line).map_err(|e| format!("bad request: {e}"))
}

/// `Some(stdin_once)` when `uri` is an attach stdin URI.
pub fn parse_stdin_uri(uri: &str) -> Option<bool> {
    uri.strip_prefix(STDIN_SCHEME).map(|rest| rest == ONCE)
}

/// The attach socket of the shim whose ttrpc address is `shim_address`
/// (`unix:///path` or a bare path).
pub fn socket_path(shim_address: &str) -> PathBuf {
    let path = shim_address.strip_prefix("unix://").unwrap_or(shim_address);
    PathBuf::from(format!("{path}{SOCKET_SUFFIX}"))
}

/// The header of a frame carrying `len` bytes of `stream`.
pub fn frame_header(stream: u8, len: usize) -> [u8; FRAME_HEADER] {
    let len = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    [stream, len[0], len[1], len[2], len[3]]
}

/// Splits a frame header into (stream, length).
pub fn parse_frame_header(h: &[u8; FRAME_HEADER]) -> (u8, usize) {
    (h[0], u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_uris() {
        assert_eq!(parse_stdin_uri(&stdin_uri(true)), Some(true));
        assert_eq!(parse_stdin_uri(&stdin_uri(false)), Some(false));
        assert_eq!(parse_stdin_uri("/run/fifo"), None);
        assert_eq!(parse_stdin_uri(""), None);
    }

    #[test]
    fn socket_next_to_the_ttrpc_socket() {
        assert_eq!(
            socket_path("unix:///run/containerd/s/abc"),
            PathBuf::from("/run/containerd/s/abc.attach")
        );
        assert_eq!(socket_path("/x/y"), PathBuf::from("/x/y.attach"));
    }

    #[test]
    fn frame_headers_round_trip() {
        let h = frame_header(STDERR, 70_000);
        assert_eq!(parse_frame_header(&h), (STDERR, 70_000));
    }

    #[test]
    fn request_lines() {
        let r = parse_request(br#"{"container":"c1","stdin":true,"stdout":true,"stderr":false}"#)
            .unwrap();
        assert_eq!(
            r,
            AttachRequest {
                container: "c1".into(),
                stdin: true,
                stdout: true,
                stderr: false,
            }
        );
        assert!(parse_request(b"").unwrap_err().starts_with("bad request"));
        let long = vec![b' '; MAX_REQUEST_LINE + 1];
        assert_eq!(parse_request(&long).unwrap_err(), "request line too long");
    }
}
