//! A SPDY/3.1 client for the streaming tests, written from the SPDY/3 draft
//! and the Kubernetes httpstream conventions (not from berth's server code):
//! an HTTP/1.1 upgrade, then client-opened streams (odd ids) with
//! zlib-compressed header blocks.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf,
    WriteHalf,
};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};

/// The SPDY/3 header dictionary: length-prefixed words, then literal text.
fn dictionary() -> Vec<u8> {
    let words = "options|head|post|put|delete|trace|accept|accept-charset|accept-encoding|\
        accept-language|accept-ranges|age|allow|authorization|cache-control|connection|\
        content-base|content-encoding|content-language|content-length|content-location|\
        content-md5|content-range|content-type|date|etag|expect|expires|from|host|if-match|\
        if-modified-since|if-none-match|if-range|if-unmodified-since|last-modified|location|\
        max-forwards|pragma|proxy-authenticate|proxy-authorization|range|referer|retry-after|\
        server|te|trailer|transfer-encoding|upgrade|user-agent|vary|via|warning|\
        www-authenticate|method|get|status|200 OK|version|HTTP/1.1|url|public|set-cookie|\
        keep-alive|origin";
    let mut d = Vec::new();
    for w in words.split('|') {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(
        b"100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505\
203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request\
401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented\
503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 \
Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,\
application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=\
gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    );
    assert_eq!(d.len(), 1423, "SPDY/3 dictionary length");
    d
}

/// The answer to the upgrade request.
pub struct Upgrade {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Upgrade {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The byte stream under the client: TCP, or TLS over TCP.
pub trait Conn: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Conn for T {}

/// Sends an HTTP/1.1 request with `headers` to `url` (http://host:port/path)
/// and reads the response head (and a short body when not 101).
pub async fn http_request(
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
) -> Result<(Upgrade, BufReader<Box<dyn Conn>>)> {
    http_request_tls(url, method, headers, None).await
}

/// [`http_request`], also to https:// URLs through `tls`.
pub async fn http_request_tls(
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
    tls: Option<&tokio_rustls::TlsConnector>,
) -> Result<(Upgrade, BufReader<Box<dyn Conn>>)> {
    let (rest, secure) = match url.strip_prefix("https://") {
        Some(rest) => (rest, true),
        None => (
            url.strip_prefix("http://")
                .context("url is neither http:// nor https://")?,
            false,
        ),
    };
    let (host, path) = rest.split_at(rest.find('/').context("url has no path")?);
    let tcp = TcpStream::connect(host)
        .await
        .with_context(|| format!("connect {host}"))?;
    let conn: Box<dyn Conn> = if secure {
        let tls = tls.context("an https:// url needs a TLS connector")?;
        let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(name.to_owned())?;
        Box::new(tls.connect(name, tcp).await.context("TLS handshake")?)
    } else {
        Box::new(tcp)
    };
    let mut tcp = BufReader::new(conn);
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tcp.get_mut().write_all(req.as_bytes()).await?;
    let mut line = String::new();
    tcp.read_line(&mut line).await?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .context("no status line")?
        .parse()?;
    let mut out = Vec::new();
    let mut len = 0usize;
    loop {
        line.clear();
        tcp.read_line(&mut line).await?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').context("bad header line")?;
        if k.eq_ignore_ascii_case("content-length") {
            len = v.trim().parse()?;
        }
        out.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let mut body = vec![0u8; len];
    if status != 101 {
        tcp.read_exact(&mut body).await?;
    }
    Ok((
        Upgrade {
            status,
            headers: out,
            body: String::from_utf8_lossy(&body).into_owned(),
        },
        tcp,
    ))
}

/// What the reader hands a stream.
enum Event {
    Data(Vec<u8>),
    Fin,
    Reset(u32),
}

struct Writer {
    wr: WriteHalf<Box<dyn Conn>>,
    deflate: Compress,
}

impl Writer {
    fn header_block(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut plain = Vec::new();
        plain.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (k, v) in headers {
            for s in [k.to_ascii_lowercase(), (*v).to_owned()] {
                plain.extend_from_slice(&(s.len() as u32).to_be_bytes());
                plain.extend_from_slice(s.as_bytes());
            }
        }
        let mut out = Vec::with_capacity(plain.len() + 1024);
        self.deflate
            .compress_vec(&plain, &mut out, FlushCompress::Sync)
            .expect("deflate");
        out
    }

    async fn control(&mut self, kind: u16, flags: u8, payload: &[u8]) -> Result<()> {
        let mut f = Vec::with_capacity(8 + payload.len());
        f.extend_from_slice(&0x8003u16.to_be_bytes());
        f.extend_from_slice(&kind.to_be_bytes());
        f.push(flags);
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        f.extend_from_slice(payload);
        self.wr.write_all(&f).await?;
        Ok(())
    }

    async fn data(&mut self, id: u32, flags: u8, data: &[u8]) -> Result<()> {
        let mut f = Vec::with_capacity(8 + data.len());
        f.extend_from_slice(&id.to_be_bytes());
        f.push(flags);
        f.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
        f.extend_from_slice(data);
        self.wr.write_all(&f).await?;
        Ok(())
    }
}

/// A client SPDY connection.
pub struct SpdyClient {
    writer: Arc<Mutex<Writer>>,
    next_id: AtomicU32,
    streams: Arc<std::sync::Mutex<HashMap<u32, mpsc::Sender<Event>>>>,
    reader: tokio::task::JoinHandle<()>,
    /// The negotiated X-Stream-Protocol-Version (if any).
    pub protocol: Option<String>,
}

impl Drop for SpdyClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// One client stream.
pub struct ClientStream {
    pub id: u32,
    rx: mpsc::Receiver<Event>,
    writer: Arc<Mutex<Writer>>,
    /// Set when the server reset the stream.
    pub reset: Option<u32>,
}

impl ClientStream {
    pub async fn write(&self, data: &[u8]) -> Result<()> {
        self.writer.lock().await.data(self.id, 0, data).await
    }

    /// Half-closes the stream.
    pub async fn close(&self) -> Result<()> {
        self.writer.lock().await.data(self.id, 1, &[]).await
    }

    /// The next chunk, or `None` at the server's FIN (or reset).
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        match self.rx.recv().await? {
            Event::Data(d) => Some(d),
            Event::Fin => None,
            Event::Reset(code) => {
                self.reset = Some(code);
                None
            }
        }
    }

    pub async fn read_to_end(&mut self) -> Vec<u8> {
        let mut all = Vec::new();
        while let Some(d) = self.recv().await {
            all.extend_from_slice(&d);
        }
        all
    }

    /// Reads until `needle` shows up in what was read (or the stream ends).
    pub async fn read_until(&mut self, needle: &str) -> String {
        let mut all = Vec::new();
        while !String::from_utf8_lossy(&all).contains(needle) {
            match self.recv().await {
                Some(d) => all.extend_from_slice(&d),
                None => break,
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    }
}

impl SpdyClient {
    /// Upgrades `url` to SPDY/3.1 offering `protocols`; an error carries the
    /// HTTP status and body when the server refuses.
    pub async fn connect(url: &str, protocols: &[&str]) -> Result<Self> {
        Self::connect_tls(url, protocols, None).await
    }

    /// [`SpdyClient::connect`], also to https:// URLs through `tls`.
    pub async fn connect_tls(
        url: &str,
        protocols: &[&str],
        tls: Option<&tokio_rustls::TlsConnector>,
    ) -> Result<Self> {
        let mut headers = vec![("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")];
        for p in protocols {
            headers.push(("X-Stream-Protocol-Version", p));
        }
        let (resp, tcp) = http_request_tls(url, "POST", &headers, tls).await?;
        if resp.status != 101 {
            bail!("upgrade refused: HTTP {} {}", resp.status, resp.body.trim());
        }
        let protocol = resp.header("X-Stream-Protocol-Version").map(str::to_owned);
        // Nothing but frames follows the response head; the BufReader may
        // hold the first ones.
        let buffered = tcp.buffer().to_vec();
        let (rd, wr) = tokio::io::split(tcp.into_inner());
        let mut deflate = Compress::new(Compression::default(), true);
        deflate.set_dictionary(&dictionary())?;
        let writer = Arc::new(Mutex::new(Writer { wr, deflate }));
        let streams: Arc<std::sync::Mutex<HashMap<u32, mpsc::Sender<Event>>>> = Arc::default();
        let reader = tokio::spawn(read_frames(buffered, rd, streams.clone(), writer.clone()));
        Ok(Self {
            writer,
            next_id: AtomicU32::new(1),
            streams,
            reader,
            protocol,
        })
    }

    /// Opens a stream with `headers` (SYN_STREAM).
    pub async fn open(&self, headers: &[(&str, &str)]) -> Result<ClientStream> {
        // The id is taken under the writer's lock: SPDY stream ids must
        // reach the peer in increasing order (a server refuses a lower id
        // than one it saw, and drops the connection), and parallel openers
        // could otherwise send theirs out of order.
        let mut w = self.writer.lock().await;
        let id = self.next_id.fetch_add(2, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel(64);
        self.streams.lock().unwrap().insert(id, tx);
        let block = w.header_block(headers);
        let mut payload = Vec::new();
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&0u32.to_be_bytes());
        payload.extend_from_slice(&[0, 0]);
        payload.extend_from_slice(&block);
        w.control(1, 0, &payload).await?;
        drop(w);
        Ok(ClientStream {
            id,
            rx,
            writer: self.writer.clone(),
            reset: None,
        })
    }

    pub async fn ping(&self, id: u32) -> Result<()> {
        self.writer
            .lock()
            .await
            .control(6, 0, &id.to_be_bytes())
            .await
    }
}

async fn read_frames(
    buffered: Vec<u8>,
    rd: ReadHalf<Box<dyn Conn>>,
    streams: Arc<std::sync::Mutex<HashMap<u32, mpsc::Sender<Event>>>>,
    _writer: Arc<Mutex<Writer>>,
) {
    let mut rd = AsyncReadExt::chain(&buffered[..], rd);
    let mut inflate = Decompress::new(true);
    let dict = dictionary();
    loop {
        let mut head = [0u8; 8];
        if rd.read_exact(&mut head).await.is_err() {
            break;
        }
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        let mut payload = vec![0u8; len];
        if rd.read_exact(&mut payload).await.is_err() {
            break;
        }
        let flags = head[4];
        let sender = |id: u32| streams.lock().unwrap().get(&id).cloned();
        if head[0] & 0x80 == 0 {
            let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            if let Some(tx) = sender(id) {
                if !payload.is_empty() {
                    let _ = tx.send(Event::Data(payload)).await;
                }
                if flags & 1 != 0 {
                    let _ = tx.send(Event::Fin).await;
                }
            }
            continue;
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        match kind {
            // SYN_REPLY: inflate the block to keep the zlib stream in step.
            2 => {
                let mut out = Vec::with_capacity(4096);
                let block = &payload[4..];
                let mut res = inflate.decompress_vec(block, &mut out, FlushDecompress::Sync);
                if let Err(e) = &res
                    && e.needs_dictionary().is_some()
                {
                    let used = inflate.total_in() as usize;
                    inflate.set_dictionary(&dict).expect("dictionary");
                    res = inflate.decompress_vec(&block[used..], &mut out, FlushDecompress::Sync);
                }
                res.expect("inflating a SYN_REPLY header block");
                let id = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                if flags & 1 != 0
                    && let Some(tx) = sender(id)
                {
                    let _ = tx.send(Event::Fin).await;
                }
            }
            // RST_STREAM
            3 => {
                let id = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                if let Some(tx) = sender(id) {
                    let _ = tx.send(Event::Reset(code)).await;
                }
            }
            _ => {}
        }
    }
    // Connection gone: every stream ends.
    streams.lock().unwrap().clear();
}
