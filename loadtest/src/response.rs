//! Strict-enough HTTP/1.1 response reader: it only has to find where a
//! response ends so the connection can be reused, and reject anything whose
//! end cannot be known.
//!
//! Accepted framing: `Content-Length`, `Transfer-Encoding: chunked`, or no
//! body for 204/304. Everything else (read-until-close bodies, unknown
//! transfer codings, conflicting lengths, interim 1xx responses, bare-LF line
//! endings, obsolete header folding) is an `InvalidData` error, which the
//! caller counts as a protocol error. Bodies are discarded, only their length
//! is reported.

use std::io::{self, BufRead, Read};

/// Upper bound for the status line plus headers (and, separately, trailers).
const MAX_HEAD: usize = 64 * 1024;
/// Upper bound for one chunk-size line (size plus extensions).
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// What the caller needs to know about one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Decoded body length in bytes (chunk framing excluded).
    pub body_len: u64,
    /// Whether the server allows another request on this connection.
    pub keep_alive: bool,
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads one complete response (head and body) from `r`.
///
/// `line` is scratch space reused between calls to avoid allocations.
pub fn read_response<R: BufRead>(r: &mut R, line: &mut Vec<u8>) -> io::Result<Response> {
    let mut budget = MAX_HEAD;
    read_line(r, line, &mut budget)?;
    let (minor, status) = parse_status_line(line)?;

    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut close_token = false;
    let mut keep_alive_token = false;
    loop {
        read_line(r, line, &mut budget)?;
        if line.is_empty() {
            break;
        }
        let (name, value) = parse_header(line)?;
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_decimal(value)?;
            if content_length.is_some_and(|c| c != n) {
                return Err(invalid("conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if chunked || !value.eq_ignore_ascii_case(b"chunked") {
                return Err(invalid("unsupported Transfer-Encoding"));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',') {
                let token = trim(token);
                close_token |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }

    if chunked && content_length.is_some() {
        return Err(invalid("both Content-Length and Transfer-Encoding"));
    }
    if (100..200).contains(&status) {
        return Err(invalid("unexpected interim 1xx response"));
    }
    let body_len = if status == 204 || status == 304 {
        0
    } else if chunked {
        read_chunked(r, line)?
    } else if let Some(n) = content_length {
        skip(r, n)?;
        n
    } else {
        return Err(invalid(
            "response has neither Content-Length nor chunked framing",
        ));
    };

    let keep_alive = if close_token {
        false
    } else if minor == 0 {
        keep_alive_token
    } else {
        true
    };
    Ok(Response {
        status,
        body_len,
        keep_alive,
    })
}

/// Reads one CRLF-terminated line into `line` (terminator stripped),
/// charging its length against `budget`.
fn read_line<R: BufRead>(r: &mut R, line: &mut Vec<u8>, budget: &mut usize) -> io::Result<()> {
    line.clear();
    let limit = u64::try_from(*budget).unwrap_or(u64::MAX);
    let n = r.by_ref().take(limit).read_until(b'\n', line)?;
    if line.last() != Some(&b'\n') {
        return Err(if n >= *budget {
            invalid("response head line too long")
        } else {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed mid-response",
            )
        });
    }
    *budget -= n;
    line.pop();
    if line.pop() != Some(b'\r') {
        return Err(invalid("line not terminated by CRLF"));
    }
    Ok(())
}

/// Parses `HTTP/1.x SP 3DIGIT [SP reason]`, returning (minor version, status).
fn parse_status_line(line: &[u8]) -> io::Result<(u8, u16)> {
    let bad = || invalid("malformed status line");
    let rest = line.strip_prefix(b"HTTP/1.").ok_or_else(bad)?;
    let (&minor, rest) = rest.split_first().ok_or_else(bad)?;
    if minor != b'0' && minor != b'1' {
        return Err(bad());
    }
    let rest = rest.strip_prefix(b" ").ok_or_else(bad)?;
    if rest.len() < 3 || (rest.len() > 3 && rest[3] != b' ') {
        return Err(bad());
    }
    let mut status = 0u16;
    for &d in &rest[..3] {
        if !d.is_ascii_digit() {
            return Err(bad());
        }
        status = status * 10 + u16::from(d - b'0');
    }
    if status < 100 {
        return Err(bad());
    }
    Ok((minor - b'0', status))
}

fn parse_header(line: &[u8]) -> io::Result<(&[u8], &[u8])> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(|| invalid("header line without ':'"))?;
    let name = &line[..colon];
    if name.is_empty()
        || name
            .iter()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(invalid("malformed header name (or obsolete line folding)"));
    }
    Ok((name, trim(&line[colon + 1..])))
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn parse_decimal(s: &[u8]) -> io::Result<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return Err(invalid("malformed Content-Length"));
    }
    Ok(s.iter()
        .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0')))
}

fn parse_hex(s: &[u8]) -> io::Result<u64> {
    if s.is_empty() || s.len() > 15 || !s.iter().all(u8::is_ascii_hexdigit) {
        return Err(invalid("malformed chunk size"));
    }
    Ok(s.iter().fold(0u64, |acc, &d| {
        // Infallible: every byte was checked to be a hex digit.
        let v = char::from(d).to_digit(16).unwrap_or(0);
        acc * 16 + u64::from(v)
    }))
}

/// Reads a chunked body including trailers; returns the decoded length.
fn read_chunked<R: BufRead>(r: &mut R, line: &mut Vec<u8>) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let mut budget = MAX_CHUNK_LINE;
        read_line(r, line, &mut budget)?;
        let size_part = line.split(|&b| b == b';').next().unwrap_or_default();
        let size = parse_hex(trim(size_part))?;
        if size == 0 {
            break;
        }
        skip(r, size)?;
        total = total
            .checked_add(size)
            .ok_or_else(|| invalid("chunked body too large"))?;
        read_line(r, line, &mut budget)?;
        if !line.is_empty() {
            return Err(invalid("chunk data not followed by CRLF"));
        }
    }
    let mut budget = MAX_HEAD;
    loop {
        read_line(r, line, &mut budget)?;
        if line.is_empty() {
            return Ok(total);
        }
        parse_header(line)?;
    }
}

/// Discards exactly `n` bytes.
fn skip<R: BufRead>(r: &mut R, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.by_ref().take(n), &mut io::sink())?;
    if copied < n {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed mid-body",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn parse(bytes: &[u8]) -> io::Result<(Response, usize)> {
        let mut cur = Cursor::new(bytes);
        let mut line = Vec::new();
        let resp = read_response(&mut cur, &mut line)?;
        let pos = usize::try_from(cur.position()).expect("position fits usize");
        Ok((resp, pos))
    }

    fn kind(bytes: &[u8]) -> io::ErrorKind {
        parse(bytes).expect_err("should fail").kind()
    }

    #[test]
    fn content_length_body_consumed_exactly() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloNEXT";
        let (resp, pos) = parse(raw).expect("valid");
        assert_eq!(
            resp,
            Response {
                status: 200,
                body_len: 5,
                keep_alive: true
            }
        );
        assert_eq!(&raw[pos..], b"NEXT");
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                    5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
        let (resp, pos) = parse(raw).expect("valid");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body_len, 5 + 26);
        assert_eq!(&raw[pos..], b"NEXT");
    }

    #[test]
    fn no_body_statuses_and_connection_semantics() {
        let (r, _) =
            parse(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n").expect("304");
        assert_eq!((r.status, r.body_len, r.keep_alive), (304, 0, true));
        let (r, _) =
            parse(b"HTTP/1.1 200 OK\r\nConnection: foo, Close\r\nContent-Length: 0\r\n\r\n")
                .expect("close");
        assert!(!r.keep_alive);
        let (r, _) = parse(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").expect("1.0");
        assert!(!r.keep_alive);
        let (r, _) =
            parse(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
                .expect("1.0 ka");
        assert!(r.keep_alive);
        let (r, _) = parse(b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\nno").expect("500");
        assert_eq!(r.status, 500);
    }

    #[test]
    fn rejects_unframed_or_ambiguous_responses() {
        use io::ErrorKind::{InvalidData, UnexpectedEof};
        assert_eq!(kind(b"HTTP/1.1 200 OK\r\n\r\nhello"), InvalidData);
        assert_eq!(kind(b"garbage\r\n\r\n"), InvalidData);
        assert_eq!(kind(b"HTTP/1.1 200 OK\nContent-Length: 0\n\n"), InvalidData);
        assert_eq!(kind(b"HTTP/1.1 20 OK\r\n\r\n"), InvalidData);
        assert_eq!(
            kind(b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"),
            InvalidData
        );
        assert_eq!(kind(b"HTTP/1.1 100 Continue\r\n\r\n"), InvalidData);
        assert_eq!(
            kind(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx"),
            InvalidData
        );
        assert_eq!(
            kind(b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\nx"),
            InvalidData
        );
        assert_eq!(
            kind(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
            InvalidData
        );
        assert_eq!(
            kind(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n"),
            InvalidData
        );
        assert_eq!(
            kind(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n"),
            InvalidData
        );
        assert_eq!(
            kind(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            InvalidData
        );
        assert_eq!(
            kind(b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\nContent-Length: 0\r\n\r\n"),
            InvalidData
        );
        assert_eq!(kind(b""), UnexpectedEof);
        assert_eq!(
            kind(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"),
            UnexpectedEof
        );
        assert_eq!(
            kind(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"),
            UnexpectedEof
        );
    }

    #[test]
    fn oversized_head_is_rejected() {
        let mut raw = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
        raw.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        raw.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(kind(&raw), io::ErrorKind::InvalidData);
    }
}
