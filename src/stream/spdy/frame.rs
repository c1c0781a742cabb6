//! SPDY/3.1 frames: parsing and serialisation, with the per-connection
//! zlib header compression (one stream per direction, preset dictionary,
//! sync-flushed after every header block).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::dictionary::DICTIONARY;
use crate::stream::error::StreamError;

pub const VERSION: u16 = 3;
pub const FLAG_FIN: u8 = 0x01;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

/// SETTINGS id of the initial per-stream window.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;
/// RST_STREAM status codes used here.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_REFUSED_STREAM: u32 = 3;
pub const RST_CANCEL: u32 = 5;

/// Largest decompressed header block accepted (a header bomb guard).
const MAX_HEADER_BLOCK: usize = 256 * 1024;

/// Header names are lower case in SPDY/3; values may hold several
/// NUL-separated values, kept here as one string.
pub type Headers = Vec<(String, String)>;

/// Looks a header up by (lower-case) name.
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_id: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        entries: Vec<(u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
    /// A control frame type this side does not know (ignored, as the spec says).
    Unknown,
}

/// Reads frames from one connection and inflates their header blocks.
pub struct FrameReader {
    inflate: Decompress,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self {
            inflate: Decompress::new(true),
        }
    }
}

impl FrameReader {
    /// Reads the next frame; `Ok(None)` on a clean end of the connection
    /// at a frame boundary.
    pub async fn read<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> Result<Option<Frame>, StreamError> {
        let mut head = [0u8; 8];
        match r.read_exact(&mut head[..1]).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(StreamError::io("reading a SPDY frame", e)),
        }
        r.read_exact(&mut head[1..])
            .await
            .map_err(|e| StreamError::io("reading a SPDY frame", e))?;
        let flags = head[4];
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        let mut payload = BytesMut::zeroed(len);
        r.read_exact(&mut payload)
            .await
            .map_err(|e| StreamError::io("reading a SPDY frame", e))?;
        let mut payload = payload.freeze();
        if head[0] & 0x80 == 0 {
            let stream_id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            return Ok(Some(Frame::Data {
                stream_id,
                flags,
                data: payload,
            }));
        }
        let version = u16::from_be_bytes([head[0], head[1]]) & 0x7fff;
        if version != VERSION {
            return Err(StreamError::Protocol(format!(
                "SPDY version {version}, only 3 is spoken"
            )));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        let need = |n: usize, p: &Bytes| {
            if p.len() < n {
                Err(StreamError::Protocol(format!(
                    "control frame type {kind} is {} bytes, needs {n}",
                    p.len()
                )))
            } else {
                Ok(())
            }
        };
        let frame = match kind {
            TYPE_SYN_STREAM => {
                need(10, &payload)?;
                let stream_id = payload.get_u32() & 0x7fff_ffff;
                let associated_id = payload.get_u32() & 0x7fff_ffff;
                let priority = payload.get_u8() >> 5;
                payload.advance(1);
                let headers = self.inflate_headers(&payload)?;
                Frame::SynStream {
                    stream_id,
                    associated_id,
                    priority,
                    flags,
                    headers,
                }
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                need(4, &payload)?;
                let stream_id = payload.get_u32() & 0x7fff_ffff;
                let headers = self.inflate_headers(&payload)?;
                if kind == TYPE_SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        flags,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        flags,
                        headers,
                    }
                }
            }
            TYPE_RST_STREAM => {
                need(8, &payload)?;
                Frame::RstStream {
                    stream_id: payload.get_u32() & 0x7fff_ffff,
                    status: payload.get_u32(),
                }
            }
            TYPE_SETTINGS => {
                need(4, &payload)?;
                let count = payload.get_u32() as usize;
                need(count.saturating_mul(8), &payload)?;
                let entries = (0..count)
                    .map(|_| {
                        let id = payload.get_u32() & 0x00ff_ffff;
                        (id, payload.get_u32())
                    })
                    .collect();
                Frame::Settings { entries }
            }
            TYPE_PING => {
                need(4, &payload)?;
                Frame::Ping {
                    id: payload.get_u32(),
                }
            }
            TYPE_GOAWAY => {
                need(4, &payload)?;
                let last_good_stream_id = payload.get_u32() & 0x7fff_ffff;
                let status = if payload.len() >= 4 {
                    payload.get_u32()
                } else {
                    0
                };
                Frame::GoAway {
                    last_good_stream_id,
                    status,
                }
            }
            TYPE_WINDOW_UPDATE => {
                need(8, &payload)?;
                Frame::WindowUpdate {
                    stream_id: payload.get_u32() & 0x7fff_ffff,
                    delta: payload.get_u32() & 0x7fff_ffff,
                }
            }
            _ => Frame::Unknown,
        };
        Ok(Some(frame))
    }

    fn inflate_headers(&mut self, input: &[u8]) -> Result<Headers, StreamError> {
        let mut out = Vec::with_capacity(input.len() * 4);
        let mut pos = 0usize;
        let bad = |e: String| StreamError::Protocol(format!("header block: {e}"));
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADER_BLOCK {
                    return Err(bad("larger than 256 KiB".to_owned()));
                }
                out.reserve(out.len().max(256));
            }
            let before = self.inflate.total_in();
            let res = self
                .inflate
                .decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync);
            pos += (self.inflate.total_in() - before) as usize;
            match res {
                Ok(Status::StreamEnd) => return Err(bad("zlib stream ended".to_owned())),
                Ok(_) => {
                    if pos >= input.len() && out.len() < out.capacity() {
                        break;
                    }
                }
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&DICTIONARY)
                        .map_err(|e| bad(e.to_string()))?;
                }
                Err(e) => return Err(bad(e.to_string())),
            }
        }
        parse_header_block(&out)
    }
}

fn parse_header_block(mut buf: &[u8]) -> Result<Headers, StreamError> {
    let short = || StreamError::Protocol("header block is truncated".to_owned());
    let take = |buf: &mut &[u8]| -> Result<Vec<u8>, StreamError> {
        if buf.len() < 4 {
            return Err(short());
        }
        let n = buf.get_u32() as usize;
        if buf.len() < n {
            return Err(short());
        }
        let v = buf[..n].to_vec();
        buf.advance(n);
        Ok(v)
    };
    if buf.len() < 4 {
        return Err(short());
    }
    let count = buf.get_u32() as usize;
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let name = take(&mut buf)?;
        let value = take(&mut buf)?;
        let name = String::from_utf8(name)
            .map_err(|_| StreamError::Protocol("header name is not UTF-8".to_owned()))?
            .to_ascii_lowercase();
        let value = String::from_utf8_lossy(&value).into_owned();
        headers.push((name, value));
    }
    Ok(headers)
}

/// Serialises frames for one connection and deflates their header blocks.
pub struct FrameWriter {
    deflate: Compress,
}

impl Default for FrameWriter {
    fn default() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(&DICTIONARY)
            .expect("a fresh zlib stream accepts a dictionary");
        Self { deflate }
    }
}

impl FrameWriter {
    /// Appends the wire form of `frame` to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), StreamError> {
        match frame {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u8(*flags);
                put_len(out, data.len())?;
                out.put_slice(data);
            }
            Frame::SynStream {
                stream_id,
                associated_id,
                priority,
                flags,
                headers,
            } => {
                let block = self.deflate_headers(headers)?;
                control(out, TYPE_SYN_STREAM, *flags, 10 + block.len())?;
                out.put_u32(*stream_id);
                out.put_u32(*associated_id);
                out.put_u8(priority << 5);
                out.put_u8(0);
                out.put_slice(&block);
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            }
            | Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                let kind = if matches!(frame, Frame::SynReply { .. }) {
                    TYPE_SYN_REPLY
                } else {
                    TYPE_HEADERS
                };
                let block = self.deflate_headers(headers)?;
                control(out, kind, *flags, 4 + block.len())?;
                out.put_u32(*stream_id);
                out.put_slice(&block);
            }
            Frame::RstStream { stream_id, status } => {
                control(out, TYPE_RST_STREAM, 0, 8)?;
                out.put_u32(*stream_id);
                out.put_u32(*status);
            }
            Frame::Settings { entries } => {
                control(out, TYPE_SETTINGS, 0, 4 + 8 * entries.len())?;
                out.put_u32(entries.len() as u32);
                for (id, value) in entries {
                    out.put_u32(id & 0x00ff_ffff);
                    out.put_u32(*value);
                }
            }
            Frame::Ping { id } => {
                control(out, TYPE_PING, 0, 4)?;
                out.put_u32(*id);
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                control(out, TYPE_GOAWAY, 0, 8)?;
                out.put_u32(*last_good_stream_id);
                out.put_u32(*status);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                control(out, TYPE_WINDOW_UPDATE, 0, 8)?;
                out.put_u32(*stream_id);
                out.put_u32(*delta);
            }
            Frame::Unknown => {}
        }
        Ok(())
    }

    fn deflate_headers(&mut self, headers: &Headers) -> Result<Vec<u8>, StreamError> {
        let mut plain = Vec::new();
        plain.put_u32(headers.len() as u32);
        for (name, value) in headers {
            plain.put_u32(name.len() as u32);
            plain.put_slice(name.to_ascii_lowercase().as_bytes());
            plain.put_u32(value.len() as u32);
            plain.put_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(plain.len() + 64);
        let mut pos = 0usize;
        loop {
            if out.len() == out.capacity() {
                out.reserve(64);
            }
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(&plain[pos..], &mut out, FlushCompress::Sync)
                .map_err(|e| StreamError::Protocol(format!("compressing headers: {e}")))?;
            pos += (self.deflate.total_in() - before) as usize;
            // A sync flush is complete once all input is taken and zlib
            // left room in the output buffer.
            if pos >= plain.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

fn control(out: &mut BytesMut, kind: u16, flags: u8, len: usize) -> Result<(), StreamError> {
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u8(flags);
    put_len(out, len)
}

fn put_len(out: &mut BytesMut, len: usize) -> Result<(), StreamError> {
    if len > 0x00ff_ffff {
        return Err(StreamError::Protocol(format!(
            "frame of {len} bytes exceeds SPDY's 16 MiB"
        )));
    }
    let b = (len as u32).to_be_bytes();
    out.put_slice(&b[1..]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[tokio::test]
    async fn frames_round_trip_through_one_compression_context() {
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                associated_id: 0,
                priority: 0,
                flags: 0,
                headers: headers(&[("streamtype", "error"), ("port", "80")]),
            },
            Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: vec![],
            },
            Frame::SynStream {
                stream_id: 3,
                associated_id: 0,
                priority: 0,
                flags: FLAG_FIN,
                headers: headers(&[("streamtype", "data"), ("port", "80")]),
            },
            Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"hello"),
            },
            Frame::RstStream {
                stream_id: 3,
                status: RST_CANCEL,
            },
            Frame::Settings {
                entries: vec![(SETTINGS_INITIAL_WINDOW_SIZE, 65536)],
            },
            Frame::Ping { id: 2 },
            Frame::GoAway {
                last_good_stream_id: 3,
                status: 0,
            },
            Frame::WindowUpdate {
                stream_id: 1,
                delta: 1000,
            },
        ];
        let mut writer = FrameWriter::default();
        let mut wire = BytesMut::new();
        for f in &frames {
            writer.encode(f, &mut wire).unwrap();
        }
        let mut reader = FrameReader::default();
        let mut input = &wire[..];
        for f in &frames {
            assert_eq!(reader.read(&mut input).await.unwrap().as_ref(), Some(f));
        }
        assert_eq!(reader.read(&mut input).await.unwrap(), None);
    }

    #[tokio::test]
    async fn garbage_header_block_is_an_error_not_a_panic() {
        let mut wire = BytesMut::new();
        control(&mut wire, TYPE_SYN_STREAM, 0, 14).unwrap();
        wire.put_u32(1);
        wire.put_u32(0);
        wire.put_u16(0);
        wire.put_u32(0xdead_beef);
        let mut input = &wire[..];
        assert!(FrameReader::default().read(&mut input).await.is_err());
    }
}
