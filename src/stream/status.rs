//! What goes on the error channel at the end of a session, and the resize
//! messages clients send. Shared by the SPDY and WebSocket transports.

use serde::Deserialize;

use super::backend::TerminalSize;
use super::error::StreamError;

/// The remotecommand protocol versions (subprotocol names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RemoteCommandVersion {
    /// `channel.k8s.io` (or no protocol header at all).
    V1,
    /// `v2.channel.k8s.io`
    V2,
    /// `v3.channel.k8s.io`: adds the resize stream.
    V3,
    /// `v4.channel.k8s.io`: exit status as a JSON metav1.Status.
    V4,
    /// `v5.channel.k8s.io` (WebSocket only): adds the close signal.
    V5,
}

impl RemoteCommandVersion {
    pub fn carries_resize(self) -> bool {
        self >= Self::V3
    }

    pub fn json_status(self) -> bool {
        self >= Self::V4
    }
}

/// How a session ended, as the backend reported it.
pub enum Outcome {
    Exited(i32),
    Attached,
    Failed(String),
}

/// The bytes for the error channel, or `None` when the protocol sends
/// nothing (success before v4).
pub fn error_channel_message(version: RemoteCommandVersion, outcome: &Outcome) -> Option<Vec<u8>> {
    let (message, reason, code) = match outcome {
        Outcome::Exited(0) | Outcome::Attached => {
            return version
                .json_status()
                .then(|| br#"{"metadata":{},"status":"Success"}"#.to_vec());
        }
        Outcome::Exited(code) => (
            format!("command terminated with non-zero exit code: exit code {code}"),
            "NonZeroExitCode",
            Some(*code),
        ),
        Outcome::Failed(message) => (message.clone(), "InternalError", None),
    };
    if !version.json_status() {
        return Some(message.into_bytes());
    }
    let mut status = serde_json::json!({
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
    });
    if let Some(code) = code {
        status["details"] = serde_json::json!({
            "causes": [{"reason": "ExitCode", "message": code.to_string()}]
        });
    }
    Some(status.to_string().into_bytes())
}

#[derive(Deserialize)]
struct WireSize {
    #[serde(alias = "width")]
    #[serde(rename = "Width")]
    width: u16,
    #[serde(alias = "height")]
    #[serde(rename = "Height")]
    height: u16,
}

/// Splits a byte stream of concatenated JSON `{"Width":..,"Height":..}`
/// objects (Go's json.Encoder output) into sizes; keeps an incomplete tail.
#[derive(Default)]
pub struct ResizeDecoder {
    buf: Vec<u8>,
}

/// A resize stream larger than this without a complete object is refused.
const MAX_RESIZE_BUFFER: usize = 4096;

impl ResizeDecoder {
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<TerminalSize>, StreamError> {
        self.buf.extend_from_slice(data);
        let mut sizes = Vec::new();
        let mut consumed = 0;
        {
            let mut iter = serde_json::Deserializer::from_slice(&self.buf).into_iter::<WireSize>();
            loop {
                match iter.next() {
                    Some(Ok(s)) => {
                        consumed = iter.byte_offset();
                        sizes.push(TerminalSize {
                            width: s.width,
                            height: s.height,
                        });
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(e)) => {
                        return Err(StreamError::Protocol(format!("resize message: {e}")));
                    }
                    None => {
                        consumed = self.buf.len();
                        break;
                    }
                }
            }
        }
        self.buf.drain(..consumed);
        if self.buf.len() > MAX_RESIZE_BUFFER {
            return Err(StreamError::Protocol("resize message too long".to_owned()));
        }
        Ok(sizes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_exit_codes() {
        let ok = error_channel_message(RemoteCommandVersion::V4, &Outcome::Exited(0)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&ok).unwrap();
        assert_eq!(v["status"], "Success");
        let bad = error_channel_message(RemoteCommandVersion::V4, &Outcome::Exited(42)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bad).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "42");
    }

    #[test]
    fn old_versions_say_nothing_on_success() {
        assert!(error_channel_message(RemoteCommandVersion::V2, &Outcome::Exited(0)).is_none());
        let text = error_channel_message(RemoteCommandVersion::V2, &Outcome::Exited(3)).unwrap();
        assert!(String::from_utf8(text).unwrap().contains('3'));
    }

    #[test]
    fn resize_objects_split_across_reads() {
        let mut d = ResizeDecoder::default();
        assert!(d.push(br#"{"Width":80,"He"#).unwrap().is_empty());
        let sizes = d
            .push(b"ight\":24}\n{\"width\":100,\"height\":33}")
            .unwrap();
        assert_eq!(
            sizes,
            vec![
                TerminalSize {
                    width: 80,
                    height: 24
                },
                TerminalSize {
                    width: 100,
                    height: 33
                }
            ]
        );
        assert!(d.push(b"not json").is_err());
    }
}
