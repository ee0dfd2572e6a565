//! Request signing exactly as the Guest Proxy Agent does it (SPEC-GPA.md section 4), byte for
//! byte, over exactly the head and body that go upstream.
//!
//! The key never appears in a log, a panic message or Debug output: `SigningKey` holds it
//! zeroized-on-drop and redacts itself. Signing clones a pre-keyed HMAC state instead of
//! re-keying per request.

use std::fmt;

use hmac::{KeyInit, Mac};
use sha2::Sha256;
use thiserror::Error;
use zeroize::Zeroizing;

type HmacSha256 = hmac::Hmac<Sha256>;

/// The scheme named in `x-ms-azure-host-authorization`.
pub const SCHEME: &str = "Azure-HMAC-SHA256";

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    #[error("the key is not 64 hex digits")]
    NotHex,
    #[error("the key guid is empty or not printable")]
    BadGuid,
}

/// A latched key: its guid and the 32 key bytes (hex-decoded from the key string).
#[derive(Clone)]
pub struct SigningKey {
    guid: String,
    key: Zeroizing<[u8; 32]>,
    keyed: HmacSha256,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("guid", &self.guid)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl SigningKey {
    /// From the key service's fields: `guid` and `key` (64 hex digits).
    pub fn from_hex(guid: &str, key_hex: &str) -> Result<Self, KeyError> {
        if guid.is_empty() || !guid.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(KeyError::BadGuid);
        }
        let hex = key_hex.trim().as_bytes();
        if hex.len() != 64 {
            return Err(KeyError::NotHex);
        }
        let mut key = Zeroizing::new([0u8; 32]);
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            let hi = hex_digit(pair[0]).ok_or(KeyError::NotHex)?;
            let lo = hex_digit(pair[1]).ok_or(KeyError::NotHex)?;
            key[i] = (hi << 4) | lo;
        }
        let keyed =
            <HmacSha256 as KeyInit>::new_from_slice(&key[..]).map_err(|_| KeyError::NotHex)?;
        Ok(SigningKey {
            guid: guid.to_owned(),
            key,
            keyed,
        })
    }

    pub fn guid(&self) -> &str {
        &self.guid
    }

    /// HMAC-SHA256 of `input`.
    pub fn mac(&self, input: &[u8]) -> [u8; 32] {
        let mut mac = self.keyed.clone();
        mac.update(input);
        mac.finalize().into_bytes().into()
    }

    /// The `x-ms-azure-host-authorization` value for a string to sign, written into `out`:
    /// `Azure-HMAC-SHA256 <guid> <lowercase hex>`.
    pub fn authorization(&self, string_to_sign: &[u8], out: &mut String) {
        out.clear();
        out.push_str(SCHEME);
        out.push(' ');
        out.push_str(&self.guid);
        out.push(' ');
        push_hex(out, &self.mac(string_to_sign));
    }

    /// Whether two keys are the same key (used when a status names a guid again).
    pub fn same_key(&self, other: &SigningKey) -> bool {
        self.guid == other.guid && self.key[..] == other.key[..]
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
}

/// The canonical query (SPEC-GPA.md section 4, step 5): split on `&` and each piece on its
/// first `=`; drop pieces with an empty key; lower-case keys, keep values raw; remove exact
/// duplicates; sort by key+value; join with `&`, a pair with an empty value as the bare key.
pub fn canonical_query(raw: &str, out: &mut String) {
    out.clear();
    let mut pairs: Vec<(String, &str)> = raw
        .split('&')
        .filter_map(|piece| {
            let (key, value) = piece.split_once('=').unwrap_or((piece, ""));
            (!key.is_empty()).then(|| (key.to_ascii_lowercase(), value))
        })
        .collect();
    pairs.sort_by(|a, b| (a.0.as_str(), a.1).cmp(&(b.0.as_str(), b.1)));
    pairs.dedup();
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
}

/// Write the string to sign (SPEC-GPA.md section 4) into `out`: method, body, the upstream
/// headers (lower-cased names, one per name with the later value winning, sorted by name,
/// values trimmed, `x-ms-azure-host-authorization` excluded), the raw path, the canonical
/// query.
pub fn string_to_sign<'h>(
    out: &mut Vec<u8>,
    method: &str,
    body: &[u8],
    headers: impl Iterator<Item = (&'h str, &'h [u8])>,
    raw_path: &str,
    raw_query: Option<&str>,
) {
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(body);
    out.push(b'\n');
    let mut fields: Vec<(String, &[u8])> = Vec::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        if name == "x-ms-azure-host-authorization" {
            continue;
        }
        match fields.iter_mut().find(|(n, _)| *n == name) {
            Some(existing) => existing.1 = value,
            None => fields.push((name, value)),
        }
    }
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, value) in fields {
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        out.extend_from_slice(value.trim_ascii());
        out.push(b'\n');
    }
    out.extend_from_slice(raw_path.as_bytes());
    out.push(b'\n');
    let mut query = String::new();
    canonical_query(raw_query.unwrap_or(""), &mut query);
    out.extend_from_slice(query.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "4A404E635266556A586E3272357538782F413F4428472B4B6250645367566B59";

    /// SPEC-GPA.md section 4, test vector 1: the HMAC primitive.
    #[test]
    fn hmac_vector() {
        let key = SigningKey::from_hex("guid-1", KEY).expect("key");
        let mut out = String::new();
        key.authorization(b"Hello world", &mut out);
        assert_eq!(
            out,
            "Azure-HMAC-SHA256 guid-1 a15b46f621193876a6d3121b836dc2af4180e2786642e55235ef916fc5b082a3"
        );
    }

    /// SPEC-GPA.md section 4, test vector 2: query canonicalisation.
    #[test]
    fn query_vector() {
        let target = "/machine/a8016240-7286-49ef-8981-63520cb8f6d0/49c242ba%2Dc18a%2D4f6c%2D8cf8%2D85ff790b6431.%5Fzpeng%2Debpf%2Dvm2?comp=config&keyOnly&comp=again&type=hostingEnvironmentConfig&incarnation=1&resource=https%3a%2f%2fstorage.azure.com%2f";
        let (path, query) = target.split_once('?').expect("query");
        let mut out = String::new();
        canonical_query(query, &mut out);
        assert_eq!(
            out,
            "comp=again&comp=config&incarnation=1&keyonly&resource=https%3a%2f%2fstorage.azure.com%2f&type=hostingEnvironmentConfig"
        );
        let mut input = Vec::new();
        string_to_sign(
            &mut input,
            "GET",
            b"",
            std::iter::empty(),
            path,
            Some(query),
        );
        let text = String::from_utf8(input).expect("utf8");
        assert!(text
            .starts_with("GET\n\n/machine/a8016240-7286-49ef-8981-63520cb8f6d0/49c242ba%2Dc18a"));
        assert!(text.ends_with(&format!("\n{out}")));
    }

    #[test]
    fn headers_are_lowered_deduplicated_sorted_trimmed_and_exclude_the_signature() {
        let headers: Vec<(&str, &[u8])> = vec![
            ("X-MS-Version", b"2012-11-30"),
            ("Host", b" 168.63.129.16 "),
            ("x-ms-version", b"2015-09-01"),
            ("x-ms-azure-host-authorization", b"forged"),
            ("Content-Length", b"2"),
        ];
        let mut input = Vec::new();
        string_to_sign(
            &mut input,
            "POST",
            b"hi",
            headers.into_iter(),
            "/machine",
            Some("comp=health"),
        );
        assert_eq!(
            String::from_utf8(input).expect("utf8"),
            "POST\nhi\ncontent-length:2\nhost:168.63.129.16\nx-ms-version:2015-09-01\n/machine\ncomp=health"
        );
    }

    #[test]
    fn keys_are_validated_and_never_printed() {
        assert_eq!(
            SigningKey::from_hex("g", "abc").err(),
            Some(KeyError::NotHex)
        );
        assert_eq!(
            SigningKey::from_hex("g", &"zz".repeat(32)).err(),
            Some(KeyError::NotHex)
        );
        assert_eq!(SigningKey::from_hex("", KEY).err(), Some(KeyError::BadGuid));
        let key = SigningKey::from_hex("g", KEY).expect("key");
        let shown = format!("{key:?}");
        assert!(
            !shown.to_lowercase().contains(&KEY[..16].to_lowercase()),
            "{shown}"
        );
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn query_edge_cases() {
        let cases = [
            ("", ""),
            ("&&=x&a", "a"),
            ("B=2&a=1&b=2", "a=1&b=2"),
            ("a=&a", "a"),
            ("a=1=2", "a=1=2"),
        ];
        for (raw, want) in cases {
            let mut out = String::new();
            canonical_query(raw, &mut out);
            assert_eq!(out, want, "{raw:?}");
        }
    }
}
