//! One server-side SPDY connection.
//!
//! The reader turns each client SYN_STREAM into an [`IncomingStream`] (a
//! bounded channel of its DATA plus a [`StreamSender`] for replies); one
//! writer serialises every outgoing frame. Backpressure: a stream whose
//! consumer lags stops the reader (and so the TCP connection), the way Go's
//! spdystream behaves, so memory stays bounded by the channel sizes. The
//! server acknowledges consumed DATA with WINDOW_UPDATE so that peers
//! enforcing SPDY flow control never stall. It does not hold its own output
//! back for the peer's window: Go's spdystream (kubelet, kubectl) never sends
//! WINDOW_UPDATE and does not enforce windows either.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::frame::{FLAG_FIN, Frame, FrameReader, FrameWriter, Headers, RST_REFUSED_STREAM};
use crate::stream::error::StreamError;

/// Largest DATA frame this side sends.
pub const MAX_DATA_FRAME: usize = 32 * 1024;
/// DATA frames queued per incoming stream before the reader waits.
const STREAM_QUEUE: usize = 8;
/// Frames queued for the writer before senders wait.
const WRITE_QUEUE: usize = 64;
/// How long a finished session may take to flush its last frames.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// A message for the writer.
pub enum Outgoing {
    Frame(Frame),
    /// Write everything queued before, then close the connection.
    Finish,
}

/// A stream the client opened.
pub struct IncomingStream {
    pub id: u32,
    pub headers: Headers,
    /// The stream's DATA; ends at the client's FIN or RST_STREAM.
    pub data: mpsc::Receiver<Bytes>,
    pub out: StreamSender,
}

/// Writes to one stream.
#[derive(Clone)]
pub struct StreamSender {
    id: u32,
    tx: mpsc::Sender<Outgoing>,
}

/// The connection is gone.
#[derive(Debug)]
pub struct Closed;

impl StreamSender {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sends `data` as DATA frames of at most [`MAX_DATA_FRAME`] bytes.
    pub async fn write(&self, data: &[u8]) -> Result<(), Closed> {
        for chunk in data.chunks(MAX_DATA_FRAME) {
            self.frame(Frame::Data {
                stream_id: self.id,
                flags: 0,
                data: Bytes::copy_from_slice(chunk),
            })
            .await?;
        }
        Ok(())
    }

    /// Half-closes the stream (an empty DATA frame with FIN).
    pub async fn close(&self) -> Result<(), Closed> {
        self.frame(Frame::Data {
            stream_id: self.id,
            flags: FLAG_FIN,
            data: Bytes::new(),
        })
        .await
    }

    /// Aborts the stream.
    pub async fn reset(&self, status: u32) -> Result<(), Closed> {
        self.frame(Frame::RstStream {
            stream_id: self.id,
            status,
        })
        .await
    }

    async fn frame(&self, frame: Frame) -> Result<(), Closed> {
        self.tx
            .send(Outgoing::Frame(frame))
            .await
            .map_err(|_| Closed)
    }
}

/// Runs a SPDY connection over `io` with `handler`, which receives the
/// client's streams and a sender for the writer. Returns when the handler is
/// done (after flushing) or when the client goes away (the handler future is
/// then dropped, which cancels everything it started).
pub async fn serve<IO, H, F>(io: IO, handler: H) -> Result<(), StreamError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    H: FnOnce(mpsc::Receiver<IncomingStream>, mpsc::Sender<Outgoing>) -> F,
    F: Future<Output = ()>,
{
    let (out_tx, out_rx) = mpsc::channel(WRITE_QUEUE);
    let (in_tx, in_rx) = mpsc::channel(16);
    let (rd, wr) = tokio::io::split(io);
    let reader_out = out_tx.clone();
    let conn = async move {
        tokio::select! {
            r = read_loop(rd, in_tx, reader_out) => r,
            r = write_loop(wr, out_rx) => r,
        }
    };
    tokio::pin!(conn);
    let handler = handler(in_rx, out_tx.clone());
    tokio::select! {
        r = &mut conn => r,
        () = handler => {
            // The handler queued its last frames and Finish; let the writer
            // drain them (the reader keeps answering pings meanwhile).
            let _ = out_tx.send(Outgoing::Finish).await;
            drop(out_tx);
            match tokio::time::timeout(FLUSH_TIMEOUT, conn).await {
                Ok(r) => r,
                Err(_) => Err(StreamError::Protocol("client did not read the end of the session".to_owned())),
            }
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut rd: R,
    incoming: mpsc::Sender<IncomingStream>,
    out: mpsc::Sender<Outgoing>,
) -> Result<(), StreamError> {
    let mut reader = FrameReader::default();
    let mut streams: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut last_id = 0u32;
    let send = |f: Frame| {
        let out = out.clone();
        async move {
            out.send(Outgoing::Frame(f))
                .await
                .map_err(|_| StreamError::Protocol("connection writer is gone".to_owned()))
        }
    };
    while let Some(frame) = reader.read(&mut rd).await? {
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                headers,
                ..
            } => {
                if stream_id % 2 == 0 || stream_id <= last_id {
                    return Err(StreamError::Protocol(format!(
                        "client opened stream {stream_id} after {last_id}"
                    )));
                }
                last_id = stream_id;
                let (tx, rx) = mpsc::channel(STREAM_QUEUE);
                if flags & FLAG_FIN == 0 {
                    streams.insert(stream_id, tx);
                }
                send(Frame::SynReply {
                    stream_id,
                    flags: 0,
                    headers: Vec::new(),
                })
                .await?;
                let stream = IncomingStream {
                    id: stream_id,
                    headers,
                    data: rx,
                    out: StreamSender {
                        id: stream_id,
                        tx: out.clone(),
                    },
                };
                if incoming.send(stream).await.is_err() {
                    streams.remove(&stream_id);
                    send(Frame::RstStream {
                        stream_id,
                        status: RST_REFUSED_STREAM,
                    })
                    .await?;
                }
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                let len = data.len();
                if len > 0
                    && let Some(tx) = streams.get(&stream_id)
                    && tx.send(data).await.is_err()
                {
                    // Nobody reads this stream any more: drop its data.
                    streams.remove(&stream_id);
                }
                if flags & FLAG_FIN != 0 {
                    streams.remove(&stream_id);
                } else if len > 0 {
                    send(Frame::WindowUpdate {
                        stream_id,
                        delta: len as u32,
                    })
                    .await?;
                }
            }
            Frame::RstStream { stream_id, .. } => {
                streams.remove(&stream_id);
            }
            Frame::Ping { id } => send(Frame::Ping { id }).await?,
            Frame::GoAway { .. } => return Ok(()),
            Frame::SynReply { .. }
            | Frame::Headers { .. }
            | Frame::Settings { .. }
            | Frame::WindowUpdate { .. }
            | Frame::Unknown => {}
        }
    }
    Ok(())
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Outgoing>,
) -> Result<(), StreamError> {
    let mut writer = FrameWriter::default();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let io = |e| StreamError::io("writing to the SPDY connection", e);
    while let Some(msg) = rx.recv().await {
        let mut finish = false;
        let mut next = Some(msg);
        // Batch whatever is already queued into one write.
        while let Some(msg) = next.take() {
            match msg {
                Outgoing::Frame(f) => writer.encode(&f, &mut buf)?,
                Outgoing::Finish => {
                    finish = true;
                    break;
                }
            }
            if buf.len() < 64 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        wr.write_all(&buf).await.map_err(io)?;
        buf.clear();
        if finish {
            wr.flush().await.map_err(io)?;
            let _ = wr.shutdown().await;
            return Ok(());
        }
    }
    wr.flush().await.map_err(io)
}
