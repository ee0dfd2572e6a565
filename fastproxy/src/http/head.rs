//! The request head: httparse with every leniency off, then fastproxy's own rules.
//!
//! The parsed head borrows the connection's read buffer (no allocation per header); the framing
//! facts the relay needs afterwards are copied into a small `Copy` struct.

use smallvec::SmallVec;

use super::error::HttpError;
use super::framing::BodyKind;

/// Methods forwarded at all (SPEC-GPA.md section 3); anything else gets 405 with `Allow`.
pub const ALLOWED_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"];
/// The `Allow` header value of a 405.
pub const ALLOW_HEADER: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH";

/// Size limits of a request head (DESIGN.md section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub request_line: usize,
    pub head: usize,
    pub headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_line: 8 * 1024,
            head: 32 * 1024,
            headers: 100,
        }
    }
}

/// Upper bound of the header array handed to httparse; `Limits::headers` may only lower it.
pub const MAX_HEADERS: usize = 100;

/// One header field, borrowed from the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'b> {
    pub name: &'b str,
    pub value: &'b [u8],
}

/// A complete, validated request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead<'b> {
    pub method: &'b str,
    /// The raw target, origin-form (`/path?query`), exactly as received.
    pub target: &'b str,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub fields: SmallVec<[Field<'b>; 24]>,
    /// Bytes of the head, including the final empty line.
    pub head_len: usize,
    pub body: BodyKind,
    /// Whether the client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    pub expect_continue: bool,
}

impl<'b> RequestHead<'b> {
    /// The raw path (target before `?`).
    pub fn path(&self) -> &'b str {
        self.target.split_once('?').map_or(self.target, |(p, _)| p)
    }

    /// The raw query (after the first `?`), if any.
    pub fn query(&self) -> Option<&'b str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// The first field with this name (ASCII case-insensitive).
    pub fn field(&self, name: &str) -> Option<&'b [u8]> {
        self.fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
            .map(|f| f.value)
    }
}

/// Parse a request head from the start of `buf`. `Ok(None)`: more bytes needed (the caller
/// must call again after reading more; limits are checked on every call).
pub fn parse_request<'b>(
    buf: &'b [u8],
    limits: &Limits,
) -> Result<Option<RequestHead<'b>>, HttpError> {
    match parse_head(buf, limits, true)? {
        Some(head) => Ok(Some(head)),
        None => {
            check_partial(buf, limits)?;
            Ok(None)
        }
    }
}

/// An incomplete head is judged on the lines it already has, so a bad request line or field
/// is refused as soon as it arrives rather than after the client finishes a head that can
/// never pass (llhttp does the same). Only runs when a head arrives in pieces.
fn check_partial(buf: &[u8], limits: &Limits) -> Result<(), HttpError> {
    let Some(last_lf) = buf.iter().rposition(|&b| b == b'\n') else {
        return check_request_line_prefix(buf);
    };
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|scratch| {
        let mut head = scratch.borrow_mut();
        head.clear();
        head.extend_from_slice(&buf[..=last_lf]);
        head.extend_from_slice(b"\r\n");
        let complete = parse_head(&head, limits, false)?;
        let has_length = complete.is_some_and(|h| {
            h.fields
                .iter()
                .any(|f| f.name.eq_ignore_ascii_case("content-length"))
        });
        check_partial_field(&buf[last_lf + 1..], has_length)
    })
}

/// The field still arriving: a Content-Length is judged digit by digit (a second one, a
/// non-digit, or an overflow can never become valid).
fn check_partial_field(line: &[u8], has_length: bool) -> Result<(), HttpError> {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return Ok(());
    };
    if !line[..colon].eq_ignore_ascii_case(b"content-length") {
        return Ok(());
    }
    if has_length {
        return Err(HttpError::Framing("repeated Content-Length"));
    }
    let value = line[colon + 1..].trim_ascii_start();
    let digits = value.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits > 19 || parse_content_length(&value[..digits]).is_none() && digits > 0 {
        return Err(HttpError::Framing("invalid Content-Length"));
    }
    if value[digits..]
        .iter()
        .any(|&b| b != b' ' && b != b'\t' && b != b'\r')
    {
        return Err(HttpError::Framing("invalid Content-Length"));
    }
    Ok(())
}

/// Before the request line is complete: the method so far must be a prefix of an allowed one
/// (anything else can never pass), and nothing may come before it.
fn check_request_line_prefix(buf: &[u8]) -> Result<(), HttpError> {
    // httparse skips empty lines before a request line; so does this check.
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let buf = &buf[start..];
    let method_end = buf.iter().position(|&b| b == b' ').unwrap_or(buf.len());
    let method = &buf[..method_end];
    if !ALLOWED_METHODS
        .iter()
        .any(|m| m.as_bytes().starts_with(method))
    {
        let shown = String::from_utf8_lossy(method).into_owned();
        return Err(if method.iter().all(u8::is_ascii_alphabetic) {
            HttpError::MethodNotAllowed(shown)
        } else {
            HttpError::Malformed("invalid method")
        });
    }
    Ok(())
}

/// Parse a head; `Ok(None)` when incomplete. `require_host` is false only when judging the
/// complete lines of a partial head (the Host line may still come).
fn parse_head<'b>(
    buf: &'b [u8],
    limits: &Limits,
    require_host: bool,
) -> Result<Option<RequestHead<'b>>, HttpError> {
    check_request_line(buf, limits)?;
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let max = limits.headers.min(MAX_HEADERS);
    let mut req = httparse::Request::new(&mut headers[..max]);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.head {
                return Err(HttpError::HeadTooLarge(limits.head));
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders(max)),
        Err(e) => return Err(HttpError::Malformed(httparse_reason(e))),
    };
    if head_len > limits.head {
        return Err(HttpError::HeadTooLarge(limits.head));
    }
    reject_bare_lf(&buf[..head_len])?;

    let method = req.method.ok_or(HttpError::Malformed("no method"))?;
    let target = req.path.ok_or(HttpError::Malformed("no target"))?;
    let minor_version = req.version.ok_or(HttpError::Malformed("no version"))?;
    if !ALLOWED_METHODS.contains(&method) {
        return Err(HttpError::MethodNotAllowed(method.to_owned()));
    }
    if !target.starts_with('/') {
        // absolute-form and asterisk-form: fastproxy routes only by the kernel-recorded
        // destination, so a target naming a host is confusion at best.
        return Err(HttpError::Malformed("request target must be origin-form"));
    }
    if !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(HttpError::Malformed("non-ASCII byte in the request target"));
    }
    check_traversal(target)?;

    let fields: SmallVec<[Field<'b>; 24]> = req
        .headers
        .iter()
        .map(|h| Field {
            name: h.name,
            value: h.value,
        })
        .collect();
    let facts = message_facts(&fields, minor_version, false)?;
    if fields
        .iter()
        .any(|f| f.name.eq_ignore_ascii_case("upgrade"))
    {
        return Err(HttpError::Malformed("protocol upgrades are not proxied"));
    }
    let body = match facts.framing {
        Framing::Chunked => BodyKind::Chunked,
        Framing::Length(n) => BodyKind::Length(n),
        // A request without framing headers has no body (RFC 9112 section 6.3).
        Framing::Unframed => BodyKind::Length(0),
    };
    let expect_continue = match fields
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case("expect"))
    {
        None => false,
        Some(f) if f.value.eq_ignore_ascii_case(b"100-continue") => true,
        Some(_) => return Err(HttpError::Malformed("unsupported Expect")),
    };
    let mut hosts = fields
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case("host"));
    // Host is required even in HTTP/1.0: the request goes upstream as HTTP/1.1, which needs it.
    match (hosts.next(), hosts.next()) {
        (Some(_), None) => {}
        (None, _) if !require_host => {}
        (None, _) => return Err(HttpError::Malformed("missing Host")),
        (Some(_), Some(_)) => return Err(HttpError::Malformed("duplicate Host")),
    }
    Ok(Some(RequestHead {
        method,
        target,
        minor_version,
        fields,
        head_len,
        body,
        keep_alive: facts.keep_alive,
        expect_continue,
    }))
}

fn check_request_line(buf: &[u8], limits: &Limits) -> Result<(), HttpError> {
    let line_end = buf.iter().position(|&b| b == b'\n');
    let line_len = line_end.unwrap_or(buf.len());
    if line_len > limits.request_line {
        return Err(HttpError::RequestLineTooLong(limits.request_line));
    }
    Ok(())
}

fn httparse_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

/// httparse accepts a bare LF as a line ending; RFC 9112 allows a recipient to, fastproxy does
/// not (a server behind it may split lines differently).
pub(crate) fn reject_bare_lf(head: &[u8]) -> Result<(), HttpError> {
    let mut prev = 0u8;
    for &b in head {
        if b == b'\n' && prev != b'\r' {
            return Err(HttpError::Malformed("bare LF"));
        }
        if prev == b'\r' && b != b'\n' {
            return Err(HttpError::Malformed("bare CR"));
        }
        prev = b;
    }
    Ok(())
}

/// GPA's rule (SPEC-GPA.md section 3): a raw path containing `//`, or whose percent-decoding
/// contains `..`, is refused.
fn check_traversal(target: &str) -> Result<(), HttpError> {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if path.contains("//") {
        return Err(HttpError::Traversal);
    }
    let bytes = path.as_bytes();
    let mut decoded_prev_dot = false;
    let mut i = 0;
    while i < bytes.len() {
        let (byte, step) = match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match (hex_value(bytes[i + 1]), hex_value(bytes[i + 2])) {
                    (Some(h), Some(l)) => ((h << 4) | l, 3),
                    _ => (b'%', 1),
                }
            }
            b => (b, 1),
        };
        if byte == b'.' {
            if decoded_prev_dot {
                return Err(HttpError::Traversal);
            }
            decoded_prev_dot = true;
        } else {
            decoded_prev_dot = false;
        }
        i += step;
    }
    Ok(())
}

pub(crate) fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Unframed,
    Length(u64),
    Chunked,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct MessageFacts {
    pub framing: Framing,
    pub keep_alive: bool,
}

/// Framing and persistence of a message, by RFC 9112 section 6, strictly: Content-Length and
/// Transfer-Encoding together, a repeated or malformed Content-Length, or a Transfer-Encoding
/// other than a single final `chunked` are refused. `response` selects the error variant.
pub(crate) fn message_facts(
    fields: &[Field<'_>],
    minor_version: u8,
    response: bool,
) -> Result<MessageFacts, HttpError> {
    let err = |m| {
        if response {
            HttpError::BadResponse(m)
        } else {
            HttpError::Framing(m)
        }
    };
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut saw_te = false;
    let mut close = false;
    let mut keep_alive_token = false;
    for f in fields {
        if f.name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Err(err("repeated Content-Length"));
            }
            length = Some(parse_content_length(f.value).ok_or(err("invalid Content-Length"))?);
        } else if f.name.eq_ignore_ascii_case("transfer-encoding") {
            if saw_te {
                return Err(err("repeated Transfer-Encoding"));
            }
            saw_te = true;
            if !f.value.eq_ignore_ascii_case(b"chunked") {
                return Err(err("unsupported Transfer-Encoding"));
            }
            chunked = true;
        } else if f.name.eq_ignore_ascii_case("connection") {
            for token in f.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                } else if [&b"host"[..], b"content-length", b"transfer-encoding"]
                    .iter()
                    .any(|f| token.eq_ignore_ascii_case(f))
                {
                    // A hop-by-hop option naming a field every recipient needs would make the
                    // proxy strip the message's own framing or routing.
                    return Err(err("Connection names a framing or routing field"));
                }
            }
        }
    }
    if chunked && length.is_some() {
        return Err(err("both Content-Length and Transfer-Encoding"));
    }
    if chunked && minor_version == 0 {
        return Err(err("Transfer-Encoding in HTTP/1.0"));
    }
    let framing = match (chunked, length) {
        (true, _) => Framing::Chunked,
        (false, Some(n)) => Framing::Length(n),
        (false, None) => Framing::Unframed,
    };
    let keep_alive = !close && (minor_version == 1 || keep_alive_token);
    Ok(MessageFacts {
        framing,
        keep_alive,
    })
}

/// 1*DIGIT, no sign, no whitespace inside, no list, and no overflow.
fn parse_content_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<Option<RequestHead<'_>>, HttpError> {
        parse_request(raw.as_bytes(), &Limits::default())
    }

    fn status(raw: &str) -> u16 {
        match parse(raw) {
            Ok(Some(_)) => 200,
            Ok(None) => 0,
            Err(e) => e.status(),
        }
    }

    #[test]
    fn parses_a_wireserver_request() {
        let raw = "GET /machine/?comp=goalstate HTTP/1.1\r\nHost: 168.63.129.16\r\nx-ms-version: 2012-11-30\r\n\r\n";
        let head = parse(raw).expect("valid").expect("complete");
        assert_eq!(head.method, "GET");
        assert_eq!(head.path(), "/machine/");
        assert_eq!(head.query(), Some("comp=goalstate"));
        assert_eq!(head.field("X-MS-VERSION"), Some(&b"2012-11-30"[..]));
        assert_eq!(head.head_len, raw.len());
        assert_eq!(head.body, BodyKind::Length(0));
        assert!(head.keep_alive);
    }

    #[test]
    fn partial_head_asks_for_more() {
        assert_eq!(parse("GET / HTTP/1.1\r\nHost: x\r\n").ok().flatten(), None);
    }

    /// One row per rule: the raw head and the status it must get (200 = accepted).
    #[test]
    fn strict_rules_table() {
        let cases: &[(&str, u16)] = &[
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", 200),
            ("GET / HTTP/1.0\r\nHost: a\r\n\r\n", 200),
            ("GET / HTTP/1.0\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            ("GET / HTTP/1.1\nHost: a\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1,1\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nExpect: something\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nConnection: host\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nConnection: Content-Length\r\n\r\nx", 400),
            ("CONNECT a:80 HTTP/1.1\r\nHost: a\r\n\r\n", 405),
            ("TRACE / HTTP/1.1\r\nHost: a\r\n\r\n", 405),
            ("GET http://168.63.129.16/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("GET //machine HTTP/1.1\r\nHost: a\r\n\r\n", 403),
            ("GET /a/../b HTTP/1.1\r\nHost: a\r\n\r\n", 403),
            ("GET /a/%2e%2E/b HTTP/1.1\r\nHost: a\r\n\r\n", 403),
            ("GET /a/.%2e/b HTTP/1.1\r\nHost: a\r\n\r\n", 403),
            ("GET /a/./b HTTP/1.1\r\nHost: a\r\n\r\n", 200),
            ("GET /a?x=.. HTTP/1.1\r\nHost: a\r\n\r\n", 200),
            ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400),
        ];
        for (raw, want) in cases {
            assert_eq!(status(raw), *want, "{raw:?}");
        }
    }

    #[test]
    fn limits_are_enforced_on_partial_input() {
        let limits = Limits::default();
        let long_line = format!("GET /{} HTTP/1.1\r\n", "a".repeat(limits.request_line));
        assert_eq!(status(&long_line[..limits.request_line + 10]), 414);
        let mut big = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        while big.len() <= limits.head {
            big.push_str("X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(status(&big), 431);
        let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 0..limits.headers {
            many.push_str(&format!("X-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(status(&many), 431);
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let h = parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .expect("ok")
            .expect("c");
        assert!(!h.keep_alive);
        let h = parse("GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
            .expect("ok")
            .expect("c");
        assert!(h.keep_alive);
        let h = parse("GET / HTTP/1.0\r\nHost: a\r\n\r\n")
            .expect("ok")
            .expect("c");
        assert!(!h.keep_alive);
    }

    #[test]
    fn framing_of_request_bodies() {
        let h = parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n")
            .expect("ok")
            .expect("c");
        assert_eq!(h.body, BodyKind::Length(12));
        let h = parse("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n")
            .expect("ok")
            .expect("c");
        assert_eq!(h.body, BodyKind::Chunked);
        let h =
            parse("PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
                .expect("ok")
                .expect("c");
        assert!(h.expect_continue);
    }
}
