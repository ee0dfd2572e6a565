//! Body framing: how long a body is, and a strict incremental chunked-coding scanner.
//!
//! The relay forwards body bytes as they arrive (the proxy never buffers a whole body), so the
//! chunked scanner does not decode: it walks the bytes, validates every size line, extension
//! and CRLF, and says how many of them belong to the body and whether the body has ended.

use super::error::HttpError;
use super::head::hex_value;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// Exactly this many bytes (0: no body).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the sender closes the connection (responses only).
    CloseDelimited,
}

/// Longest chunk-size line accepted (size digits plus extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// Longest trailer section accepted.
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size; `digits` seen so far.
    Size {
        digits: u8,
    },
    /// In a chunk extension, right after `;`: a name must start here.
    ExtensionStart,
    /// In a chunk extension's name.
    ExtensionName,
    /// Right after `=`: a token or a quoted string must start here.
    ExtensionValueStart,
    /// In an unquoted extension value.
    ExtensionValue,
    /// In a quoted extension value; `escaped` after a backslash.
    ExtensionQuoted {
        escaped: bool,
    },
    /// After the closing quote: `;` or CR must follow.
    ExtensionQuotedEnd,
    /// Expecting LF after the CR ending the size line.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// Expecting CR after chunk data.
    DataCr,
    /// Expecting LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    /// Expecting LF ending a trailer line.
    TrailerLf,
    /// Expecting LF ending the final empty line.
    FinalLf,
    Done,
}

/// Incremental, strict scanner of a chunked body.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    remaining: u64,
    line_len: usize,
    trailer_len: usize,
    response: bool,
}

impl ChunkedDecoder {
    /// `response` selects which error a malformed body reports (400 vs 502).
    pub fn new(response: bool) -> Self {
        ChunkedDecoder {
            state: State::Size { digits: 0 },
            size: 0,
            remaining: 0,
            line_len: 0,
            trailer_len: 0,
            response,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    fn err(&self, m: &'static str) -> HttpError {
        if self.response {
            HttpError::BadResponse(m)
        } else {
            HttpError::Framing(m)
        }
    }

    /// Scan `input`; returns how many leading bytes belong to the body. When the body ends
    /// inside `input`, `is_done()` turns true and the rest of `input` is not consumed.
    pub fn advance(&mut self, input: &[u8]) -> Result<usize, HttpError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Done => return Ok(i),
                State::Data => {
                    let take = usize::try_from(self.remaining)
                        .unwrap_or(usize::MAX)
                        .min(input.len() - i);
                    self.remaining -= take as u64;
                    i += take;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::Size { digits } => {
                    self.bump_line()?;
                    if let Some(v) = hex_value(b) {
                        if digits >= 15 {
                            return Err(self.err("chunk size too large"));
                        }
                        self.size = (self.size << 4) | u64::from(v);
                        self.state = State::Size { digits: digits + 1 };
                    } else if digits == 0 {
                        return Err(self.err("empty chunk size"));
                    } else if b == b';' {
                        self.state = State::ExtensionStart;
                    } else if b == b'\r' {
                        self.state = State::SizeLf;
                    } else {
                        // No whitespace before `;` or CR: servers disagree on it.
                        return Err(self.err("invalid chunk size"));
                    }
                }
                State::ExtensionStart => {
                    self.bump_line()?;
                    if !is_tchar(b) {
                        return Err(self.err("chunk extension without a name"));
                    }
                    self.state = State::ExtensionName;
                }
                State::ExtensionName => {
                    self.bump_line()?;
                    match b {
                        b'=' => self.state = State::ExtensionValueStart,
                        b';' => self.state = State::ExtensionStart,
                        b'\r' => self.state = State::SizeLf,
                        b if is_tchar(b) => {}
                        _ => return Err(self.err("invalid byte in a chunk extension name")),
                    }
                }
                State::ExtensionValueStart => {
                    self.bump_line()?;
                    match b {
                        b'"' => self.state = State::ExtensionQuoted { escaped: false },
                        b if is_tchar(b) => self.state = State::ExtensionValue,
                        _ => return Err(self.err("empty chunk extension value")),
                    }
                }
                State::ExtensionValue => {
                    self.bump_line()?;
                    match b {
                        b';' => self.state = State::ExtensionStart,
                        b'\r' => self.state = State::SizeLf,
                        b if is_tchar(b) => {}
                        _ => return Err(self.err("invalid byte in a chunk extension value")),
                    }
                }
                State::ExtensionQuoted { escaped } => {
                    self.bump_line()?;
                    // qdtext and quoted-pair (RFC 9110 5.6.4): HTAB, SP, VCHAR, obs-text.
                    let text = b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80;
                    if !text {
                        return Err(self.err("invalid byte in a quoted chunk extension"));
                    }
                    self.state = match (escaped, b) {
                        (true, _) => State::ExtensionQuoted { escaped: false },
                        (false, b'\\') => State::ExtensionQuoted { escaped: true },
                        (false, b'"') => State::ExtensionQuotedEnd,
                        (false, _) => State::ExtensionQuoted { escaped: false },
                    };
                }
                State::ExtensionQuotedEnd => {
                    self.bump_line()?;
                    match b {
                        b';' => self.state = State::ExtensionStart,
                        b'\r' => self.state = State::SizeLf,
                        _ => return Err(self.err("bytes after a quoted chunk extension")),
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(self.err("chunk size line not ended by CRLF"));
                    }
                    self.line_len = 0;
                    if self.size == 0 {
                        self.state = State::TrailerStart;
                    } else {
                        self.remaining = self.size;
                        self.size = 0;
                        self.state = State::Data;
                    }
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(self.err("chunk data not followed by CRLF"));
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(self.err("chunk data not followed by CRLF"));
                    }
                    self.state = State::Size { digits: 0 };
                }
                State::TrailerStart => {
                    self.bump_trailer()?;
                    match b {
                        b'\r' => self.state = State::FinalLf,
                        b' ' | b'\t' => return Err(self.err("obs-fold in trailer")),
                        b'\n' => return Err(self.err("bare LF in trailer")),
                        _ => self.state = State::Trailer,
                    }
                }
                State::Trailer => {
                    self.bump_trailer()?;
                    match b {
                        b'\r' => self.state = State::TrailerLf,
                        b'\n' | 0 => return Err(self.err("invalid byte in trailer")),
                        _ => {}
                    }
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(self.err("trailer line not ended by CRLF"));
                    }
                    self.state = State::TrailerStart;
                }
                State::FinalLf => {
                    if b != b'\n' {
                        return Err(self.err("chunked body not ended by CRLF"));
                    }
                    self.state = State::Done;
                    return Ok(i + 1);
                }
            }
            i += 1;
        }
        Ok(i)
    }

    fn bump_line(&mut self) -> Result<(), HttpError> {
        self.line_len += 1;
        if self.line_len > MAX_CHUNK_LINE {
            return Err(self.err("chunk size line too long"));
        }
        Ok(())
    }

    fn bump_trailer(&mut self) -> Result<(), HttpError> {
        self.trailer_len += 1;
        if self.trailer_len > MAX_TRAILERS {
            return Err(self.err("trailers too large"));
        }
        Ok(())
    }
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` in every possible two-piece split; all must agree.
    fn scan(body: &[u8]) -> Result<usize, HttpError> {
        let mut whole = ChunkedDecoder::new(false);
        let expected = whole.advance(body).map(|n| (n, whole.is_done()));
        for split in 0..=body.len() {
            let mut d = ChunkedDecoder::new(false);
            let got = d.advance(&body[..split]).and_then(|a| {
                if d.is_done() {
                    Ok(a)
                } else {
                    d.advance(&body[split..]).map(|b| a + b)
                }
            });
            assert_eq!(
                got.clone().map(|n| (n, d.is_done())),
                expected,
                "split at {split}"
            );
        }
        match expected {
            Ok((n, true)) => Ok(n),
            Ok((_, false)) => Err(HttpError::Framing("incomplete")),
            Err(e) => Err(e),
        }
    }

    #[test]
    fn accepts_valid_bodies_and_stops_at_the_end() {
        let body =
            b"5\r\nhello\r\nA;ext=1;q=\"x\\\"y\";flag\r\n0123456789\r\n0\r\nTrailer: v\r\n\r\nNEXT";
        assert_eq!(scan(body), Ok(body.len() - 4));
        assert_eq!(scan(b"0\r\n\r\n"), Ok(5));
    }

    #[test]
    fn rejects_malformed_bodies() {
        let bad: &[&[u8]] = &[
            b"\r\n",                             // empty size
            b";x\r\n",                           // empty size with extension
            b"5 \r\nhello\r\n0\r\n\r\n",         // whitespace after size
            b"5\nhello\r\n0\r\n\r\n",            // bare LF after size
            b"5;a\nb\r\nhello\r\n0\r\n\r\n",     // LF in extension
            b"5;a\0b\r\nhello\r\n0\r\n\r\n",     // NUL in extension
            b"5;\r\nhello\r\n0\r\n\r\n",         // no extension name
            b"5;a=\r\nhello\r\n0\r\n\r\n",       // empty value
            b"5;a=\"x\r\nhello\r\n0\r\n\r\n",    // unbalanced quote
            b"5;a=\"x\"y\r\nhello\r\n0\r\n\r\n", // bytes after the quote
            b"5 ;a\r\nhello\r\n0\r\n\r\n",       // whitespace before the semicolon
            b"5\r\nhelloX\r\n0\r\n\r\n",         // data longer than its size
            b"-5\r\n",                           // sign
            b"0x5\r\n",                          // 0x prefix: 0 then x
            b"fffffffffffffffff\r\n",            // overflow
            b"0\r\nT: v\n\r\n",                  // bare LF in trailer
            b"0\r\n\n",                          // bare LF ending
        ];
        for body in bad {
            assert!(scan(body).is_err(), "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn large_chunk_sizes_stream() {
        let mut d = ChunkedDecoder::new(true);
        assert_eq!(d.advance(b"100000\r\n"), Ok(8));
        let data = vec![b'x'; 0x100000];
        assert_eq!(d.advance(&data), Ok(data.len()));
        assert_eq!(d.advance(b"\r\n0\r\n\r\n"), Ok(7));
        assert!(d.is_done());
    }
}
