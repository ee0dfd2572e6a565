//! The Guest Proxy Agent's request signature (SPEC-GPA.md section 4), written from the
//! specification independently of fastproxy's own implementation, so that each checks the other.
//!
//! The signed input is: the method, `\n`, the raw body bytes, `\n`, the headers (names
//! lower-cased, one entry per name with the later value winning, sorted by name, each
//! `name:value\n` with the value trimmed, `x-ms-azure-host-authorization` left out), the raw
//! path, `\n`, and the canonical query ([`canonical_query`]). The signature is the lowercase hex
//! HMAC-SHA256 of that input, keyed with the hex-decoded key.

use std::collections::BTreeMap;

use hmac::{KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = hmac::Hmac<Sha256>;

/// The only authorization scheme there is.
pub const AUTHORIZATION_SCHEME: &str = "Azure-HMAC-SHA256";
/// The request header carrying `Azure-HMAC-SHA256 <keyGuid> <hex HMAC>`.
pub const AUTHORIZATION_HEADER: &str = "x-ms-azure-host-authorization";

/// The canonical query: split the raw query on `&` and each piece on its first `=`, drop
/// pieces with an empty key, lower-case keys and keep values raw, remove exact duplicates, sort
/// by the string key+value, and join with `&`, a pair with an empty value written as the bare
/// key.
pub fn canonical_query(raw_query: &str) -> String {
    let mut pairs: Vec<(String, &str)> = Vec::new();
    for piece in raw_query.split('&') {
        let (key, value) = piece.split_once('=').unwrap_or((piece, ""));
        if key.is_empty() {
            continue;
        }
        let key = key.to_lowercase();
        if !pairs.iter().any(|(k, v)| *k == key && *v == value) {
            pairs.push((key, value));
        }
    }
    // By the concatenation key+value (not by key, then value); the sort is stable.
    pairs.sort_by(|a, b| {
        a.0.bytes()
            .chain(a.1.bytes())
            .cmp(b.0.bytes().chain(b.1.bytes()))
    });
    let mut out = String::with_capacity(raw_query.len());
    for (i, (key, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(key);
        if !value.is_empty() {
            out.push('=');
            out.push_str(value);
        }
    }
    out
}

/// The bytes that are signed, for a request with that method, raw body, headers (as they went
/// on the wire, any order and case), raw path (still percent-encoded) and raw query (without
/// the `?`).
pub fn string_to_sign<'a>(
    method: &str,
    body: &[u8],
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    path: &str,
    raw_query: &str,
) -> Vec<u8> {
    let mut sorted = BTreeMap::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        if name != AUTHORIZATION_HEADER {
            // A later value replaces an earlier one.
            sorted.insert(name, value.trim());
        }
    }
    let query = canonical_query(raw_query);
    let mut out = Vec::with_capacity(method.len() + body.len() + path.len() + query.len() + 256);
    out.extend_from_slice(method.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(body);
    out.push(b'\n');
    for (name, value) in &sorted {
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(path.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(query.as_bytes());
    out
}

/// Decodes a hex string (either case); `None` when it is not whole hex bytes.
pub fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    let digits = hex.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |d: u8| (d as char).to_digit(16).map(|n| n as u8);
    digits
        .chunks(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

/// Lowercase hex.
pub fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

fn keyed(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail.
    <HmacSha256 as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

/// HMAC-SHA256 of `message` under `key`, as lowercase hex.
pub fn hmac_hex(key: &[u8], message: &[u8]) -> String {
    let mut mac = keyed(key);
    mac.update(message);
    encode_hex(&mac.finalize().into_bytes())
}

/// Whether `signature_hex` (either case) is the HMAC-SHA256 of `message` under `key`; the
/// comparison is constant-time.
pub fn verify_hmac(key: &[u8], message: &[u8], signature_hex: &str) -> bool {
    let Some(signature) = decode_hex(signature_hex) else {
        return false;
    };
    let mut mac = keyed(key);
    mac.update(message);
    mac.verify_slice(&signature).is_ok()
}

/// The `x-ms-azure-host-authorization` value for a request, as a client of the stand-in would
/// send it: `target` is the request target (origin or absolute form), `headers` every header
/// that goes on the wire (the authorization header itself is ignored if present). `key_hex` is
/// the `key` string of `POST /secure-channel/key`.
pub fn authorization_value<'a>(
    key_guid: &str,
    key_hex: &str,
    method: &str,
    target: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    body: &[u8],
) -> anyhow::Result<String> {
    let key = decode_hex(key_hex).ok_or_else(|| anyhow::anyhow!("the key is not hex"))?;
    let (path, query) = crate::util::split_target(target);
    let message = string_to_sign(method, body, headers, path, query);
    Ok(format!(
        "{AUTHORIZATION_SCHEME} {key_guid} {}",
        hmac_hex(&key, &message)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SPEC-GPA.md section 4, HMAC primitive vector.
    #[test]
    fn hmac_vector() {
        let key = decode_hex("4A404E635266556A586E3272357538782F413F4428472B4B6250645367566B59")
            .expect("hex key");
        assert_eq!(key.len(), 32);
        let expected = "a15b46f621193876a6d3121b836dc2af4180e2786642e55235ef916fc5b082a3";
        assert_eq!(hmac_hex(&key, b"Hello world"), expected);
        assert!(verify_hmac(&key, b"Hello world", expected));
        assert!(verify_hmac(
            &key,
            b"Hello world",
            &expected.to_ascii_uppercase()
        ));
        assert!(!verify_hmac(&key, b"Hello world!", expected));
        assert!(!verify_hmac(&key, b"Hello world", &expected[..62]));
        assert!(!verify_hmac(&key, b"Hello world", "zz"));
    }

    /// SPEC-GPA.md section 4, query canonicalisation vector.
    #[test]
    fn query_vector() {
        let target = "/machine/a8016240-7286-49ef-8981-63520cb8f6d0/49c242ba%2Dc18a%2D4f6c%2D8cf8%2D85ff790b6431.%5Fzpeng%2Debpf%2Dvm2?comp=config&keyOnly&comp=again&type=hostingEnvironmentConfig&incarnation=1&resource=https%3a%2f%2fstorage.azure.com%2f";
        let (path, query) = crate::util::split_target(target);
        assert_eq!(
            path,
            "/machine/a8016240-7286-49ef-8981-63520cb8f6d0/49c242ba%2Dc18a%2D4f6c%2D8cf8%2D85ff790b6431.%5Fzpeng%2Debpf%2Dvm2"
        );
        assert_eq!(
            canonical_query(query),
            "comp=again&comp=config&incarnation=1&keyonly&resource=https%3a%2f%2fstorage.azure.com%2f&type=hostingEnvironmentConfig"
        );
    }

    #[test]
    fn query_edge_cases() {
        assert_eq!(canonical_query(""), "");
        assert_eq!(canonical_query("&&=x&=&"), "", "empty keys are dropped");
        assert_eq!(canonical_query("a=&b"), "a&b", "empty values are bare keys");
        assert_eq!(
            canonical_query("B=2&b=2&b=2&a=1"),
            "a=1&b=2",
            "duplicates removed"
        );
        assert_eq!(
            canonical_query("x=B&x=a"),
            "x=B&x=a",
            "values keep their case"
        );
        assert_eq!(
            canonical_query("k=a=b&k"),
            "k&k=a=b",
            "split on the first '='"
        );
        // Sorted on key+value: "ab"+"" < "a"+"c" although "a" < "ab".
        assert_eq!(canonical_query("a=c&ab"), "ab&a=c");
    }

    #[test]
    fn string_to_sign_layout() {
        let headers = [
            ("Host", "168.63.129.16"),
            ("X-Ms-Version", " 2012-11-30 "),
            ("x-ms-azure-host-authorization", "Azure-HMAC-SHA256 g s"),
            ("b-dup", "first"),
            ("B-Dup", "second"),
        ];
        let s = string_to_sign("POST", b"a\nb", headers, "/p%2Fq", "z=1&A=2");
        assert_eq!(
            String::from_utf8(s).expect("utf-8"),
            "POST\na\nb\nb-dup:second\nhost:168.63.129.16\nx-ms-version:2012-11-30\n/p%2Fq\na=2&z=1"
        );
        let s = string_to_sign("GET", b"", [], "/", "");
        assert_eq!(s, b"GET\n\n/\n");
    }

    #[test]
    fn authorization_values() {
        let key = "4A404E635266556A586E3272357538782F413F4428472B4B6250645367566B59";
        let value =
            authorization_value("g-1", key, "GET", "/x?b&a", [("H", "v")], b"").expect("signs");
        let (scheme, rest) = value.split_once(' ').expect("scheme");
        assert_eq!(scheme, AUTHORIZATION_SCHEME);
        let (guid, sig) = rest.split_once(' ').expect("guid");
        assert_eq!(guid, "g-1");
        let message = string_to_sign("GET", b"", [("h", "v")], "/x", "a&b");
        assert!(verify_hmac(&decode_hex(key).expect("hex"), &message, sig));
        assert_eq!(sig, sig.to_ascii_lowercase());
        assert!(authorization_value("g", "xyz", "GET", "/", [], b"").is_err());
        assert_eq!(encode_hex(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(decode_hex("00aBfF"), Some(vec![0, 0xab, 0xff]));
        assert_eq!(decode_hex("abc"), None);
    }
}
