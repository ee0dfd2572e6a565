//! Re-serialisation: fastproxy never forwards the bytes of a head it received; it writes a new
//! head from the parsed one, without hop-by-hop fields, without any client copy of the proxy's
//! own `x-ms-azure-host-*` fields, and with the proxy's fields added exactly once.

use std::io::Write;

use super::framing::BodyKind;
use super::head::{Field, RequestHead};
use super::response::ResponseHead;

/// Prefix of every field the proxy itself sets; clients and upstreams may not supply them.
pub const PROXY_FIELD_PREFIX: &str = "x-ms-azure-host-";
/// The marker every response through the proxy carries (SPEC-GPA.md section 3, step 7).
pub const RESPONSE_MARKER: (&str, &str) = ("x-ms-azure-host-authorization", "value");

/// RFC 9110 section 7.6.1 hop-by-hop fields, plus the legacy ones proxies strip.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

fn starts_with_ignore_case(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len()
        && name.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// Whether `name` is listed in any `Connection` field of `fields`.
fn named_by_connection(fields: &[Field<'_>], name: &str) -> bool {
    fields
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case("connection"))
        .flat_map(|f| f.value.split(|&b| b == b','))
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
}

/// Fields of a request that are forwarded as they are.
pub fn forwarded_request_fields<'a, 'b>(
    head: &'a RequestHead<'b>,
) -> impl Iterator<Item = &'a Field<'b>> {
    head.fields.iter().filter(move |f| {
        !is_hop_by_hop(f.name)
            && !starts_with_ignore_case(f.name, PROXY_FIELD_PREFIX)
            && !f.name.eq_ignore_ascii_case("expect")
            && !named_by_connection(&head.fields, f.name)
    })
}

/// Write the head that goes upstream: the request line, the forwarded fields, the framing the
/// relay will produce, then `added` (the proxy's own fields) in order.
pub fn write_upstream_request(out: &mut Vec<u8>, head: &RequestHead<'_>, added: &[(&str, &[u8])]) {
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for f in forwarded_request_fields(head) {
        write_field(out, f.name, f.value);
    }
    if head.body == BodyKind::Chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    for (name, value) in added {
        write_field(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
}

/// Write the head that goes back to the client.
pub fn write_client_response(out: &mut Vec<u8>, head: &ResponseHead<'_>, close: bool) {
    let _ = write!(out, "HTTP/1.1 {} ", head.status);
    out.extend_from_slice(head.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for f in &head.fields {
        let keep_framing = f.name.eq_ignore_ascii_case("transfer-encoding");
        if (is_hop_by_hop(f.name) && !keep_framing)
            || f.name.eq_ignore_ascii_case(RESPONSE_MARKER.0)
            || named_by_connection(&head.fields, f.name)
        {
            continue;
        }
        write_field(out, f.name, f.value);
    }
    write_field(out, RESPONSE_MARKER.0, RESPONSE_MARKER.1.as_bytes());
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Write a response the proxy makes itself (errors, refusals): always `Connection: close`.
pub fn write_local_response(out: &mut Vec<u8>, status: u16, extra: &[(&str, &str)], body: &str) {
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
        reason_phrase(status),
        body.len()
    );
    for (name, value) in extra {
        write_field(out, name, value.as_bytes());
    }
    write_field(out, RESPONSE_MARKER.0, RESPONSE_MARKER.1.as_bytes());
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(body.as_bytes());
}

/// A JSON answer the proxy makes itself (its local paths), closing the connection.
pub fn write_local_json(out: &mut Vec<u8>, status: u16, body: &str) {
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason_phrase(status),
        body.len()
    );
    out.extend_from_slice(body.as_bytes());
}

fn write_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Reason phrases of the statuses the proxy makes itself.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::head::{parse_request, Limits};
    use crate::http::response::parse_response;

    fn upstream(raw: &str, added: &[(&str, &[u8])]) -> String {
        let head = parse_request(raw.as_bytes(), &Limits::default())
            .expect("valid")
            .expect("complete");
        let mut out = Vec::new();
        write_upstream_request(&mut out, &head, added);
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn strips_hop_by_hop_connection_named_and_client_proxy_fields() {
        let out = upstream(
            "POST /machine?comp=health HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: 5\r\nx-ms-azure-host-claims: forged\r\nX-MS-AZURE-HOST-AUTHORIZATION: forged\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
            &[("x-ms-azure-host-claims", b"{ \"isRoot\": \"true\"}")],
        );
        assert_eq!(
            out,
            "POST /machine?comp=health HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nx-ms-azure-host-claims: { \"isRoot\": \"true\"}\r\n\r\n"
        );
    }

    #[test]
    fn reserialised_head_parses_to_the_same_meaning() {
        let raw = "PUT /status HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nx-ms-version: 2015-09-01\r\n\r\n";
        let out = upstream(raw, &[]);
        let a = parse_request(raw.as_bytes(), &Limits::default())
            .expect("ok")
            .expect("c");
        let b = parse_request(out.as_bytes(), &Limits::default())
            .expect("ok")
            .expect("c");
        assert_eq!((a.method, a.target, a.body), (b.method, b.target, b.body));
        assert_eq!(a.fields, b.fields);
    }

    #[test]
    fn response_gets_exactly_one_marker() {
        let raw = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nx-ms-azure-host-authorization: upstream\r\nConnection: keep-alive\r\n\r\n";
        let head = parse_response(raw.as_bytes(), false, &Limits::default())
            .expect("ok")
            .expect("c");
        let mut out = Vec::new();
        write_client_response(&mut out, &head, true);
        let text = String::from_utf8(out).expect("utf8");
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nx-ms-azure-host-authorization: value\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn local_responses_close() {
        let mut out = Vec::new();
        write_local_response(&mut out, 405, &[("Allow", "GET")], "no\n");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(text.contains("\r\nAllow: GET\r\n"));
        assert!(text.contains("\r\nConnection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nno\n"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn token() -> impl Strategy<Value = String> {
            "[A-Za-z][A-Za-z0-9-]{0,12}"
        }

        fn value() -> impl Strategy<Value = String> {
            "[!-~]([ !-~]{0,20}[!-~])?"
        }

        /// A valid request head: method, target, arbitrary extra fields (some hop-by-hop, some
        /// forged proxy fields, some named by Connection), and one framing.
        fn request() -> impl Strategy<Value = (String, Vec<(String, String)>)> {
            let method = prop::sample::select(vec![
                "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH",
            ]);
            let target = "/([a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,3})?(\\?[a-z]{1,5}=[a-z0-9]{0,6}){0,1}";
            let special = prop::sample::select(vec![
                "Keep-Alive",
                "TE",
                "Trailer",
                "Upgrade-Insecure-Requests",
                "x-ms-azure-host-claims",
                "X-MS-AZURE-HOST-AUTHORIZATION",
                "x-ms-azure-host-date",
                "Proxy-Authorization",
            ]);
            let field = prop_oneof![
                (token(), value()),
                (special.prop_map(str::to_owned), value()),
            ];
            let framing = prop::sample::select(vec!["none", "length", "chunked"]);
            (
                method,
                target,
                prop::collection::vec(field, 0..12),
                framing,
                any::<bool>(),
            )
                .prop_map(|(method, target, mut fields, framing, connection)| {
                    fields.retain(|(n, _)| {
                        ![
                            "host",
                            "content-length",
                            "transfer-encoding",
                            "connection",
                            "upgrade",
                            "expect",
                        ]
                        .contains(&n.to_ascii_lowercase().as_str())
                    });
                    fields.insert(0, ("Host".into(), "168.63.129.16".into()));
                    match framing {
                        "length" => fields.push(("Content-Length".into(), "3".into())),
                        "chunked" => fields.push(("Transfer-Encoding".into(), "chunked".into())),
                        _ => {}
                    }
                    if connection {
                        // Connection may name any end-to-end field but the framing and routing
                        // ones (those are refused; see the strict-rules table).
                        let named = fields
                            .iter()
                            .rev()
                            .map(|(n, _)| n.clone())
                            .find(|n| {
                                !["host", "content-length", "transfer-encoding"]
                                    .contains(&n.to_ascii_lowercase().as_str())
                            })
                            .unwrap_or_else(|| "x-none".into());
                        fields.push(("Connection".into(), format!("keep-alive, {named}")));
                    }
                    (format!("{method} {target}"), fields)
                })
        }

        proptest! {
            #[test]
            fn reserialised_heads_keep_their_meaning((line, fields) in request()) {
                let mut raw = format!("{line} HTTP/1.1\r\n");
                for (n, v) in &fields {
                    raw.push_str(&format!("{n}: {v}\r\n"));
                }
                raw.push_str("\r\n");
                let limits = Limits::default();
                let head = parse_request(raw.as_bytes(), &limits).expect("valid").expect("complete");
                let mut out = Vec::new();
                let claims: &[u8] = b"{ \"isRoot\": \"false\"}";
                write_upstream_request(&mut out, &head, &[("x-ms-azure-host-claims", claims)]);
                let again = parse_request(&out, &limits).expect("re-serialised head parses").expect("complete");

                prop_assert_eq!(again.method, head.method);
                prop_assert_eq!(again.target, head.target);
                prop_assert_eq!(again.body, head.body);
                // Exactly one proxy field, the proxy's own.
                let proxy: Vec<_> = again.fields.iter().filter(|f| starts_with_ignore_case(f.name, PROXY_FIELD_PREFIX)).collect();
                prop_assert_eq!(proxy.len(), 1);
                prop_assert_eq!(proxy[0].value, claims);
                // Every end-to-end field survives, in order; nothing hop-by-hop does.
                let expected: Vec<_> = forwarded_request_fields(&head).map(|f| (f.name, f.value)).collect();
                let got: Vec<_> = again
                    .fields
                    .iter()
                    .filter(|f| !starts_with_ignore_case(f.name, PROXY_FIELD_PREFIX) && !f.name.eq_ignore_ascii_case("transfer-encoding"))
                    .map(|f| (f.name, f.value))
                    .collect();
                prop_assert_eq!(got, expected);
                prop_assert!(again.fields.iter().all(|f| !is_hop_by_hop(f.name) || f.name.eq_ignore_ascii_case("transfer-encoding")));
            }
        }
    }
}
