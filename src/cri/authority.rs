//! Any `:authority` on the CRI socket.
//!
//! gRPC clients on a unix socket send whatever they make of the socket's
//! path as `:authority`: grpc's C core since 1.57 (Python, Ruby, PHP, C++)
//! its %-encoding without the leading slash (`run%2Fberth%2Fberth.sock`),
//! grpc-java, grpc-swift and grpc-go before ~1.55 the path itself. hyper's
//! h2 parses `:authority` as a URI authority, finds neither valid, and
//! resets the stream with PROTOCOL_ERROR before tonic sees the request
//! (hyperium/h2#487 is open; there is no option to relax it). containerd
//! and CRI-O (grpc-go servers) take any authority on their sockets, and the
//! CRI server has no use for it.
//!
//! [`AnyAuthority`] wraps each accepted connection and rewrites what the
//! client sends before hyper reads it: it follows the HTTP/2 frames, passes
//! every frame through as it is except the header blocks (HEADERS and its
//! CONTINUATIONs), which it decodes with the client's HPACK context
//! (dynamic table and all, so state carries across blocks as it must),
//! replaces an `:authority` that does not parse as one with `localhost`
//! (what grpc-go sends on a unix socket), and encodes again with a second
//! HPACK context that mirrors h2's decoder. Padding is dropped; priority is
//! kept. The server's side of the connection is not touched. Anything that
//! is not HTTP/2 from its first byte passes through unchanged, and a frame
//! too large for the server's limit makes the rewrite stop, passing it on
//! for h2 to refuse.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::codegen::http;
use tonic::transport::server::Connected;

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// SETTINGS_MAX_FRAME_SIZE of the server (h2's default; tonic sets none):
/// no frame the client may send is larger, none this writes either.
const MAX_FRAME: usize = 16_384;
/// The largest header block (all its frames) this buffers.
const MAX_BLOCK: usize = 1 << 20;
/// SETTINGS_HEADER_TABLE_SIZE of the server (HPACK's default; h2 sends none).
const TABLE_SIZE: usize = 4096;
/// What replaces an `:authority` h2 would refuse.
const REPLACEMENT: &[u8] = b"localhost";

fn protocol(reason: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the client preface, this many bytes of it seen.
    Preface(usize),
    /// At a frame header.
    Frame,
    /// Inside a frame that passes through; this many bytes of it left.
    Passthrough(usize),
    /// Not (or no longer) rewriting: everything passes through.
    Off,
}

/// A header block whose frames are still coming.
#[derive(Debug)]
struct PendingBlock {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

/// The client-to-server byte stream of one HTTP/2 connection, rewritten.
pub struct Http2Rewriter {
    state: State,
    raw: BytesMut,
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
    pending: Option<PendingBlock>,
    rewritten: u64,
}

impl std::fmt::Debug for Http2Rewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http2Rewriter")
            .field("state", &self.state)
            .field("buffered", &self.raw.len())
            .field("rewritten", &self.rewritten)
            .finish_non_exhaustive()
    }
}

impl Default for Http2Rewriter {
    fn default() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Self {
            state: State::Preface(0),
            raw: BytesMut::new(),
            decoder,
            encoder: loona_hpack::Encoder::new(),
            pending: None,
            rewritten: 0,
        }
    }
}

impl Http2Rewriter {
    /// Takes `input` from the client; appends to `out` what the server may
    /// read so far. An error means the client broke HTTP/2 framing or HPACK
    /// in a way that leaves nothing sensible to pass on.
    pub fn feed(&mut self, input: &[u8], out: &mut BytesMut) -> io::Result<()> {
        self.raw.extend_from_slice(input);
        loop {
            match self.state {
                State::Off => {
                    out.extend_from_slice(&self.raw.split());
                    return Ok(());
                }
                State::Preface(seen) => {
                    let n = self.raw.len().min(PREFACE.len() - seen);
                    if self.raw[..n] != PREFACE[seen..seen + n] {
                        self.state = State::Off;
                        continue;
                    }
                    out.extend_from_slice(&self.raw.split_to(n));
                    if seen + n < PREFACE.len() {
                        self.state = State::Preface(seen + n);
                        return Ok(());
                    }
                    self.state = State::Frame;
                }
                State::Passthrough(0) => self.state = State::Frame,
                State::Passthrough(left) => {
                    let n = self.raw.len().min(left);
                    if n == 0 {
                        return Ok(());
                    }
                    out.extend_from_slice(&self.raw.split_to(n));
                    self.state = State::Passthrough(left - n);
                }
                State::Frame => {
                    if self.raw.len() < FRAME_HEADER {
                        return Ok(());
                    }
                    let len = usize::from(self.raw[0]) << 16
                        | usize::from(self.raw[1]) << 8
                        | usize::from(self.raw[2]);
                    let kind = self.raw[3];
                    let is_block = kind == HEADERS || kind == CONTINUATION;
                    if is_block && len > MAX_FRAME {
                        // h2 answers FRAME_SIZE_ERROR and closes.
                        self.state = State::Off;
                        continue;
                    }
                    if !is_block {
                        if self.pending.is_some() {
                            return Err(protocol(format!(
                                "frame type {kind:#x} inside a header block"
                            )));
                        }
                        out.extend_from_slice(&self.raw.split_to(FRAME_HEADER));
                        self.state = State::Passthrough(len);
                        continue;
                    }
                    if self.raw.len() < FRAME_HEADER + len {
                        return Ok(());
                    }
                    let frame = self.raw.split_to(FRAME_HEADER + len);
                    let flags = frame[4];
                    let stream =
                        u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
                    self.block_frame(kind, flags, stream, &frame[FRAME_HEADER..], out)?;
                }
            }
        }
    }

    /// The client closed its side: what is left passes through as it is.
    pub fn eof(&mut self, out: &mut BytesMut) {
        out.extend_from_slice(&self.raw.split());
    }

    fn block_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        mut payload: &[u8],
        out: &mut BytesMut,
    ) -> io::Result<()> {
        if kind == HEADERS {
            if self.pending.is_some() {
                return Err(protocol("HEADERS inside a header block"));
            }
            let mut pad = 0;
            if flags & PADDED != 0 {
                if payload.is_empty() {
                    return Err(protocol("PADDED HEADERS without a pad length"));
                }
                pad = usize::from(payload.get_u8());
            }
            let priority = if flags & PRIORITY != 0 {
                if payload.len() < 5 {
                    return Err(protocol("PRIORITY HEADERS without priority fields"));
                }
                let mut p = [0u8; 5];
                payload.copy_to_slice(&mut p);
                Some(p)
            } else {
                None
            };
            if pad > payload.len() {
                return Err(protocol("HEADERS padding longer than the frame"));
            }
            self.pending = Some(PendingBlock {
                stream,
                end_stream: flags & END_STREAM != 0,
                priority,
                block: payload[..payload.len() - pad].to_vec(),
            });
        } else {
            let Some(p) = self.pending.as_mut().filter(|p| p.stream == stream) else {
                return Err(protocol("CONTINUATION without its HEADERS"));
            };
            if p.block.len() + payload.len() > MAX_BLOCK {
                return Err(protocol(format!(
                    "header block of more than {MAX_BLOCK} bytes"
                )));
            }
            p.block.extend_from_slice(payload);
        }
        if flags & END_HEADERS != 0 {
            let p = self.pending.take().expect("a pending block");
            self.rewrite_block(p, out)?;
        }
        Ok(())
    }

    fn rewrite_block(&mut self, p: PendingBlock, out: &mut BytesMut) -> io::Result<()> {
        let mut headers = self
            .decoder
            .decode(&p.block)
            .map_err(|e| protocol(format!("HPACK: {e:?}")))?;
        for (name, value) in &mut headers {
            if name.as_slice() == b":authority"
                && http::uri::Authority::try_from(&value[..]).is_err()
            {
                tracing::debug!(
                    stream = p.stream,
                    authority = %String::from_utf8_lossy(value),
                    "the client's :authority is none; taking it as localhost"
                );
                *value = REPLACEMENT.to_vec();
                self.rewritten += 1;
            }
        }
        let block = self
            .encoder
            .encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
        let mut rest = &block[..];
        let mut first = true;
        loop {
            let priority = if first { p.priority } else { None };
            let room = MAX_FRAME - if priority.is_some() { 5 } else { 0 };
            let (chunk, after) = rest.split_at(rest.len().min(room));
            rest = after;
            let (kind, mut flags) = if first {
                (
                    HEADERS,
                    if p.end_stream { END_STREAM } else { 0 }
                        | if priority.is_some() { PRIORITY } else { 0 },
                )
            } else {
                (CONTINUATION, 0)
            };
            if rest.is_empty() {
                flags |= END_HEADERS;
            }
            let len = chunk.len() + if priority.is_some() { 5 } else { 0 };
            out.put_uint(len as u64, 3);
            out.put_u8(kind);
            out.put_u8(flags);
            out.put_u32(p.stream);
            if let Some(pr) = priority {
                out.put_slice(&pr);
            }
            out.put_slice(chunk);
            first = false;
            if rest.is_empty() {
                return Ok(());
            }
        }
    }
}

/// An accepted CRI connection whose client-sent `:authority` h2 accepts.
#[derive(Debug)]
pub struct AnyAuthority<IO> {
    io: IO,
    rewriter: Http2Rewriter,
    /// Rewritten bytes the server has not read yet.
    ready: BytesMut,
    scratch: Box<[u8]>,
    eof: bool,
}

impl<IO> AnyAuthority<IO> {
    pub fn new(io: IO) -> Self {
        Self {
            io,
            rewriter: Http2Rewriter::default(),
            ready: BytesMut::new(),
            scratch: vec![0u8; 32 * 1024].into_boxed_slice(),
            eof: false,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for AnyAuthority<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut read = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.eof = true;
                this.rewriter.eof(&mut this.ready);
            } else {
                this.rewriter.feed(read.filled(), &mut this.ready)?;
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for AnyAuthority<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for AnyAuthority<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Headers = Vec<(Vec<u8>, Vec<u8>)>;
    /// A frame other than a header block: (type, flags, payload).
    type Frame = (u8, u8, Vec<u8>);

    fn request(authority: &str, path: &str) -> Headers {
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("grpc-timeout", "29999m"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// What a client writes: the preface, SETTINGS, then per request a
    /// header block (split into HEADERS + CONTINUATIONs of `split` bytes,
    /// padded and with priority on the first request) and a DATA frame.
    /// The client's HPACK context indexes, so later blocks refer to
    /// entries earlier ones added.
    fn client_bytes(requests: &[Headers], split: usize) -> Vec<u8> {
        let mut enc = loona_hpack::Encoder::new();
        let mut out = PREFACE.to_vec();
        out.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]));
        for (i, h) in requests.iter().enumerate() {
            let stream = 1 + 2 * i as u32;
            let block = enc.encode(h.iter().map(|(n, v)| (&n[..], &v[..])));
            let chunks: Vec<&[u8]> = block.chunks(split).collect();
            for (j, c) in chunks.iter().enumerate() {
                let last = j + 1 == chunks.len();
                let end = if last { END_HEADERS } else { 0 };
                if j == 0 {
                    let mut payload = Vec::new();
                    let mut flags = end;
                    if i == 0 {
                        flags |= PADDED | PRIORITY;
                        payload.push(3);
                        payload.extend_from_slice(&[0, 0, 0, 0, 15]);
                    }
                    payload.extend_from_slice(c);
                    if i == 0 {
                        payload.extend_from_slice(&[0, 0, 0]);
                    }
                    out.extend(frame(HEADERS, flags, stream, &payload));
                } else {
                    out.extend(frame(CONTINUATION, end, stream, c));
                }
            }
            out.extend(frame(0x0, END_STREAM, stream, b"\0\0\0\0\x02hi"));
        }
        out
    }

    /// Parses what the server reads back into header lists and the other
    /// frames, decoding with a fresh HPACK context (as h2 does).
    fn server_view(bytes: &[u8]) -> (Vec<Headers>, Vec<Frame>) {
        assert!(bytes.starts_with(PREFACE));
        let mut rest = &bytes[PREFACE.len()..];
        let mut dec = loona_hpack::Decoder::new();
        let (mut blocks, mut others, mut block) = (Vec::new(), Vec::new(), Vec::new());
        while !rest.is_empty() {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            assert!(len <= MAX_FRAME);
            let (kind, flags) = (rest[3], rest[4]);
            let mut payload = &rest[9..9 + len];
            rest = &rest[9 + len..];
            match kind {
                HEADERS | CONTINUATION => {
                    assert_eq!(flags & PADDED, 0, "no padding is passed on");
                    if kind == HEADERS && flags & PRIORITY != 0 {
                        assert_eq!(&payload[..5], &[0, 0, 0, 0, 15], "priority kept");
                        payload = &payload[5..];
                    }
                    block.extend_from_slice(payload);
                    if flags & END_HEADERS != 0 {
                        blocks.push(dec.decode(&block).unwrap());
                        block.clear();
                    }
                }
                _ => others.push((kind, flags, payload.to_vec())),
            }
        }
        (blocks, others)
    }

    fn rewrite(input: &[u8], step: usize) -> Vec<u8> {
        let mut r = Http2Rewriter::default();
        let mut out = BytesMut::new();
        for chunk in input.chunks(step) {
            r.feed(chunk, &mut out).unwrap();
        }
        r.eof(&mut out);
        out.to_vec()
    }

    #[test]
    fn authorities_h2_refuses_become_localhost_and_the_rest_is_kept() {
        let requests = vec![
            request(
                "run%2Fberth%2Fberth.sock",
                "/runtime.v1.RuntimeService/Version",
            ),
            request("/run/berth/berth.sock", "/runtime.v1.RuntimeService/Status"),
            request("localhost", "/runtime.v1.ImageService/ListImages"),
            request(
                "run%2Fberth%2Fberth.sock",
                "/runtime.v1.RuntimeService/Version",
            ),
        ];
        let input = client_bytes(&requests, 7);
        for step in [1, 5, 9, 100, input.len()] {
            let (blocks, others) = server_view(&rewrite(&input, step));
            assert_eq!(blocks.len(), requests.len(), "step {step}");
            for (got, sent) in blocks.iter().zip(&requests) {
                for ((gn, gv), (sn, sv)) in got.iter().zip(sent) {
                    assert_eq!(gn, sn);
                    if gn.as_slice() == b":authority" && sv.as_slice() != b"localhost" {
                        assert_eq!(gv.as_slice(), b"localhost");
                    } else {
                        assert_eq!(gv, sv, "{}", String::from_utf8_lossy(gn));
                    }
                }
                assert_eq!(got.len(), sent.len());
            }
            assert_eq!(others.len(), 1 + requests.len(), "SETTINGS and DATA");
            assert_eq!(others[0].0, 0x4);
            assert!(
                others[1..]
                    .iter()
                    .all(|(k, f, p)| *k == 0 && *f == END_STREAM && p == b"\0\0\0\0\x02hi")
            );
        }
    }

    #[test]
    fn a_large_header_block_goes_out_in_frames_the_server_takes() {
        let mut h = request(
            "/run/berth/berth.sock",
            "/runtime.v1.RuntimeService/Version",
        );
        h.push((b"x-big".to_vec(), vec![b'v'; 40_000]));
        // The first frame carries 9 bytes of padding and priority besides.
        let input = client_bytes(std::slice::from_ref(&h), MAX_FRAME - 9);
        let (blocks, _) = server_view(&rewrite(&input, 4096));
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].last().unwrap().1.len(), 40_000);
    }

    #[test]
    fn what_is_not_http2_passes_through() {
        let input = b"GET / HTTP/1.1\r\nHost: /run/berth.sock\r\n\r\n";
        assert_eq!(rewrite(input, 3), input);
        // A preface cut short, as sent.
        assert_eq!(rewrite(&PREFACE[..10], 4), &PREFACE[..10]);
    }

    #[test]
    fn broken_framing_is_an_error() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(CONTINUATION, END_HEADERS, 1, b"\x82"));
        let mut r = Http2Rewriter::default();
        assert!(r.feed(&input, &mut BytesMut::new()).is_err());
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, b"\x82"));
        input.extend(frame(0x0, 0, 1, b""));
        let mut r = Http2Rewriter::default();
        assert!(r.feed(&input, &mut BytesMut::new()).is_err());
    }
}
