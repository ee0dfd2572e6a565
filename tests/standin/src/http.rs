//! A small HTTP/1.1 server connection: keep-alive, pipelining, Content-Length and chunked
//! request bodies, `Expect: 100-continue`, absolute-form targets. It keeps header names as
//! sent and in arrival order for the record, and counts bodies past [`BODY_KEEP`] without
//! holding them.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{util, Endpoint, RecordedRequest, State};

/// Longest request head (request line and headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Most headers accepted in one request.
const MAX_HEADERS: usize = 128;
/// Largest request body accepted (vmAgentLog uploads reach 100 MB).
const MAX_BODY: u64 = 256 * 1024 * 1024;
/// How much of a body handlers get to see; the rest is only counted.
const BODY_KEEP: usize = 1024 * 1024;
/// Chunk size when writing generated bodies.
const WRITE_CHUNK: usize = 64 * 1024;

/// A parsed request, as handlers see it.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, String)>,
    /// The first [`BODY_KEEP`] bytes of the body.
    pub(crate) body: Vec<u8>,
    pub(crate) body_len: usize,
    /// The address the client connected to.
    pub(crate) local: SocketAddr,
    /// The key guid of a valid `x-ms-azure-host-authorization`, once checked.
    pub(crate) signed_by: Option<String>,
}

impl Request {
    /// The first header of that name (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Path and query of the target (an absolute-form target loses its scheme and authority).
    pub(crate) fn path_and_query(&self) -> (&str, &str) {
        util::split_target(&self.target)
    }
}

/// What a handler answers.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Body,
}

#[derive(Debug)]
pub(crate) enum Body {
    Bytes(Vec<u8>),
    /// `len` bytes of [`crate::artifact_byte`], generated while writing.
    Pattern(u64),
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Body::Bytes(b) => b.len() as u64,
            Body::Pattern(n) => *n,
        }
    }
}

impl Response {
    pub(crate) fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: Body::Bytes(body.into()),
        }
    }

    pub(crate) fn json(status: u16, value: &serde_json::Value) -> Self {
        Self::new(
            status,
            "application/json; charset=utf-8",
            value.to_string().into_bytes(),
        )
    }

    pub(crate) fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

enum ReadError {
    /// The peer went away or the socket failed: just close.
    Io,
    /// Malformed framing: answer 400 and close.
    Bad,
    /// Body over [`MAX_BODY`]: answer 413 and close.
    TooLarge,
}

impl From<std::io::Error> for ReadError {
    fn from(_: std::io::Error) -> Self {
        ReadError::Io
    }
}

/// The request head, parsed and owned.
struct Head {
    method: String,
    target: String,
    minor: u8,
    headers: Vec<(String, String)>,
}

impl Head {
    fn tokens(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    }
}

enum Framing {
    None,
    Length(u64),
    Chunked,
}

struct Connection {
    stream: TcpStream,
    /// Bytes read but not consumed yet.
    buf: Vec<u8>,
    endpoint: Endpoint,
    peer: SocketAddr,
    local: SocketAddr,
    state: Arc<State>,
}

/// Serves requests on one connection until it closes.
pub(crate) async fn serve_connection(
    endpoint: Endpoint,
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<State>,
) {
    let _ = stream.set_nodelay(true);
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let mut conn = Connection {
        stream,
        buf: Vec::with_capacity(16 * 1024),
        endpoint,
        peer,
        local,
        state,
    };
    while let Ok(true) = conn.one_request().await {}
    let _ = conn.stream.shutdown().await;
}

impl Connection {
    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 8 * 1024 {
            self.buf.reserve(64 * 1024);
        }
        self.stream.read_buf(&mut self.buf).await
    }

    /// Handles one request; `Ok(true)` when the connection stays open for another.
    async fn one_request(&mut self) -> Result<bool, ReadError> {
        let head = match self.read_head().await? {
            Some(Ok(head)) => head,
            Some(Err(status)) => {
                let head = Head {
                    method: String::new(),
                    target: String::new(),
                    minor: 1,
                    headers: Vec::new(),
                };
                self.reject(&head, status, 0).await;
                return Ok(false);
            }
            None => return Ok(false),
        };
        let framing = match framing(&head) {
            Ok(f) => f,
            Err(status) => {
                self.reject(&head, status, 0).await;
                return Ok(false);
            }
        };
        let has_body = !matches!(framing, Framing::None | Framing::Length(0));
        if has_body && head.minor >= 1 && head.tokens("expect").iter().any(|t| t == "100-continue")
        {
            self.stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await?;
        }
        let mut body = Vec::new();
        let mut body_len = 0u64;
        let read = match framing {
            Framing::None => Ok(()),
            Framing::Length(n) => self.read_exact(n, &mut body, &mut body_len).await,
            Framing::Chunked => self.read_chunked(&mut body, &mut body_len).await,
        };
        match read {
            Ok(()) => {}
            Err(ReadError::Io) => return Err(ReadError::Io),
            Err(ReadError::Bad) => {
                self.reject(&head, 400, body_len).await;
                return Ok(false);
            }
            Err(ReadError::TooLarge) => {
                self.reject(&head, 413, body_len).await;
                return Ok(false);
            }
        }

        let conn_tokens = head.tokens("connection");
        let keep_alive = if head.minor >= 1 {
            !conn_tokens.iter().any(|t| t == "close")
        } else {
            conn_tokens.iter().any(|t| t == "keep-alive")
        };
        let mut request = Request {
            method: head.method,
            target: head.target,
            headers: head.headers,
            body,
            body_len: usize::try_from(body_len).unwrap_or(usize::MAX),
            local: self.local,
            signed_by: None,
        };
        let (signature, signed_by, refused) = self.state.channel.check(self.endpoint, &request);
        request.signed_by = signed_by;
        let response = match refused {
            Some(refused) => refused,
            None => match self.endpoint {
                Endpoint::WireServer => crate::wireserver::handle(&request, &self.state),
                Endpoint::HostGaPlugin => crate::hostga::handle(&request),
                Endpoint::Imds => crate::imds::handle(&request),
            },
        };
        let head_only = request.method == "HEAD";
        let minor = if keep_alive && head.minor == 0 { 0 } else { 1 };
        self.state.record(&RecordedRequest {
            endpoint: self.endpoint,
            peer: self.peer.to_string(),
            method: request.method,
            target: request.target,
            headers: request.headers,
            body_len: request.body_len,
            status: response.status,
            signature: Some(signature),
        });
        self.write_response(response, keep_alive, minor == 0, head_only)
            .await?;
        Ok(keep_alive)
    }

    /// `None` on a clean end of stream before any byte of a request; `Some(Err(status))` when
    /// the head cannot be accepted.
    async fn read_head(&mut self) -> Result<Option<Result<Head, u16>>, ReadError> {
        loop {
            // Tolerate stray line breaks between requests (RFC 9112 section 2.2).
            let skip = self
                .buf
                .iter()
                .take_while(|b| **b == b'\r' || **b == b'\n')
                .count();
            self.buf.drain(..skip);
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let end = end + 4;
                let parsed = parse_head(&self.buf[..end]);
                self.buf.drain(..end);
                return Ok(Some(parsed));
            }
            if self.buf.len() > MAX_HEAD {
                return Ok(Some(Err(431)));
            }
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
    }

    async fn read_exact(
        &mut self,
        mut n: u64,
        keep: &mut Vec<u8>,
        count: &mut u64,
    ) -> Result<(), ReadError> {
        while n > 0 {
            if self.buf.is_empty() && self.fill().await? == 0 {
                return Err(ReadError::Io);
            }
            let take = self.buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            let room = BODY_KEEP.saturating_sub(keep.len()).min(take);
            keep.extend_from_slice(&self.buf[..room]);
            self.buf.drain(..take);
            n -= take as u64;
            *count += take as u64;
        }
        Ok(())
    }

    async fn read_line(&mut self) -> Result<String, ReadError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line = String::from_utf8_lossy(&self.buf[..pos])
                    .trim_end_matches('\r')
                    .to_string();
                self.buf.drain(..=pos);
                return Ok(line);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(ReadError::Bad);
            }
            if self.fill().await? == 0 {
                return Err(ReadError::Io);
            }
        }
    }

    async fn read_chunked(&mut self, keep: &mut Vec<u8>, count: &mut u64) -> Result<(), ReadError> {
        loop {
            let line = self.read_line().await?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size, 16).map_err(|_| ReadError::Bad)?;
            if size == 0 {
                // Trailer section, up to the empty line.
                while !self.read_line().await?.is_empty() {}
                return Ok(());
            }
            if count.checked_add(size).is_none_or(|total| total > MAX_BODY) {
                return Err(ReadError::TooLarge);
            }
            self.read_exact(size, keep, count).await?;
            if !self.read_line().await?.is_empty() {
                return Err(ReadError::Bad);
            }
        }
    }

    /// Records and answers a request that cannot be handled, then the connection closes.
    async fn reject(&mut self, head: &Head, status: u16, body_len: u64) {
        self.state.record(&RecordedRequest {
            endpoint: self.endpoint,
            peer: self.peer.to_string(),
            method: head.method.clone(),
            target: head.target.clone(),
            headers: head.headers.clone(),
            body_len: usize::try_from(body_len).unwrap_or(usize::MAX),
            status,
            signature: None,
        });
        let response = Response::new(status, "text/plain; charset=utf-8", util::reason(status));
        let _ = self.write_response(response, false, false, false).await;
    }

    async fn write_response(
        &mut self,
        response: Response,
        keep_alive: bool,
        http10_keep_alive: bool,
        head_only: bool,
    ) -> std::io::Result<()> {
        let status = response.status;
        let mut out = format!("HTTP/1.1 {status} {}\r\n", util::reason(status));
        for (name, value) in &response.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        // 304 and 1xx/204 carry no body and no length.
        let bodiless = status == 304 || status == 204 || status < 200;
        if !bodiless {
            out.push_str(&format!("Content-Length: {}\r\n", response.body.len()));
        }
        out.push_str(&format!("Date: {}\r\n", util::http_date_now()));
        if !keep_alive {
            out.push_str("Connection: close\r\n");
        } else if http10_keep_alive {
            out.push_str("Connection: keep-alive\r\n");
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        if bodiless || head_only {
            return self.stream.write_all(&out).await;
        }
        match response.body {
            Body::Bytes(bytes) => {
                out.extend_from_slice(&bytes);
                self.stream.write_all(&out).await
            }
            Body::Pattern(len) => {
                self.stream.write_all(&out).await?;
                let mut chunk = vec![0u8; WRITE_CHUNK];
                let mut offset = 0u64;
                while offset < len {
                    let n = usize::try_from((len - offset).min(WRITE_CHUNK as u64))
                        .unwrap_or(WRITE_CHUNK);
                    for (i, b) in chunk[..n].iter_mut().enumerate() {
                        *b = crate::artifact_byte(offset + i as u64);
                    }
                    self.stream.write_all(&chunk[..n]).await?;
                    offset += n as u64;
                }
                Ok(())
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(bytes: &[u8]) -> Result<Head, u16> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => return Err(431),
        _ => return Err(400),
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(400);
    };
    Ok(Head {
        method: method.to_string(),
        target: target.to_string(),
        minor,
        headers: req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
    })
}

fn framing(head: &Head) -> Result<Framing, u16> {
    let codings = head.tokens("transfer-encoding");
    if !codings.is_empty() {
        // Chunked must be the final coding; a request with both framings is refused.
        let has_length = head
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-length"));
        return match codings.last() {
            Some(last) if last == "chunked" && !has_length && head.minor >= 1 => {
                Ok(Framing::Chunked)
            }
            _ => Err(400),
        };
    }
    let mut length = None;
    for (_, value) in head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        for part in value.split(',') {
            let n: u64 = part.trim().parse().map_err(|_| 400u16)?;
            if length.is_some_and(|l| l != n) {
                return Err(400);
            }
            length = Some(n);
        }
    }
    match length {
        Some(n) if n > MAX_BODY => Err(413),
        Some(n) => Ok(Framing::Length(n)),
        None => Ok(Framing::None),
    }
}
