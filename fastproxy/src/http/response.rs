//! The upstream's response head, parsed as strictly as requests: a response fastproxy cannot
//! frame with certainty is answered 502 and its connection discarded.

use smallvec::SmallVec;

use super::error::HttpError;
use super::framing::BodyKind;
use super::head::{message_facts, reject_bare_lf, Field, Framing, Limits, MAX_HEADERS};

/// A complete, validated response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead<'b> {
    pub status: u16,
    pub reason: &'b str,
    pub minor_version: u8,
    pub fields: SmallVec<[Field<'b>; 24]>,
    pub head_len: usize,
    pub body: BodyKind,
    /// Whether the upstream connection may carry another request afterwards.
    pub keep_alive: bool,
}

impl ResponseHead<'_> {
    /// 1xx responses precede the final one.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status)
    }
}

/// Parse a response head from the start of `buf`; `head_request` says whether it answers a
/// HEAD (which never has a body, whatever the headers say). `Ok(None)`: more bytes needed.
pub fn parse_response<'b>(
    buf: &'b [u8],
    head_request: bool,
    limits: &Limits,
) -> Result<Option<ResponseHead<'b>>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    let head_len = match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.head {
                return Err(HttpError::BadResponse("response head too large"));
            }
            return Ok(None);
        }
        Err(_) => return Err(HttpError::BadResponse("unparsable response head")),
    };
    if head_len > limits.head {
        return Err(HttpError::BadResponse("response head too large"));
    }
    reject_bare_lf(&buf[..head_len]).map_err(|_| HttpError::BadResponse("bare CR or LF"))?;
    let status = res.code.ok_or(HttpError::BadResponse("no status"))?;
    let minor_version = res.version.ok_or(HttpError::BadResponse("no version"))?;
    let reason = res.reason.unwrap_or("");
    if !(100..=599).contains(&status) {
        return Err(HttpError::BadResponse("status out of range"));
    }
    if status == 101 {
        return Err(HttpError::BadResponse("protocol switch"));
    }
    let fields: SmallVec<[Field<'b>; 24]> = res
        .headers
        .iter()
        .map(|h| Field {
            name: h.name,
            value: h.value,
        })
        .collect();
    let facts = message_facts(&fields, minor_version, true)?;
    let bodiless = head_request || (100..200).contains(&status) || status == 204 || status == 304;
    let (body, keep_alive) = match facts.framing {
        _ if bodiless => (BodyKind::Length(0), facts.keep_alive),
        Framing::Chunked => (BodyKind::Chunked, facts.keep_alive),
        Framing::Length(n) => (BodyKind::Length(n), facts.keep_alive),
        Framing::Unframed => (BodyKind::CloseDelimited, false),
    };
    Ok(Some(ResponseHead {
        status,
        reason,
        minor_version,
        fields,
        head_len,
        body,
        keep_alive,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str, head: bool) -> Result<Option<ResponseHead<'_>>, HttpError> {
        parse_response(raw.as_bytes(), head, &Limits::default())
    }

    #[test]
    fn framing_table() {
        let cases: &[(&str, bool, Option<BodyKind>)] = &[
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                false,
                Some(BodyKind::Length(5)),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                true,
                Some(BodyKind::Length(0)),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                Some(BodyKind::Chunked),
            ),
            (
                "HTTP/1.1 200 OK\r\n\r\n",
                false,
                Some(BodyKind::CloseDelimited),
            ),
            (
                "HTTP/1.1 204 No Content\r\n\r\n",
                false,
                Some(BodyKind::Length(0)),
            ),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                false,
                Some(BodyKind::Length(0)),
            ),
            (
                "HTTP/1.1 100 Continue\r\n\r\n",
                false,
                Some(BodyKind::Length(0)),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                false,
                None,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                None,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                false,
                None,
            ),
            ("HTTP/1.1 200 OK\nContent-Length: 5\r\n\r\n", false, None),
            ("HTTP/1.1 101 Switching Protocols\r\n\r\n", false, None),
            ("HTTP/1.1 999 Odd\r\n\r\n", false, None),
            ("garbage\r\n\r\n", false, None),
        ];
        for (raw, head, want) in cases {
            let got = parse(raw, *head).map(|r| r.map(|h| h.body));
            match want {
                Some(kind) => assert_eq!(got, Ok(Some(*kind)), "{raw:?}"),
                None => assert!(got.is_err(), "{raw:?} gave {got:?}"),
            }
        }
    }

    #[test]
    fn close_delimited_is_never_kept_alive() {
        let r = parse("HTTP/1.1 200 OK\r\n\r\n", false)
            .expect("ok")
            .expect("complete");
        assert!(!r.keep_alive);
        let r = parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            false,
        )
        .expect("ok")
        .expect("complete");
        assert!(!r.keep_alive);
    }
}
