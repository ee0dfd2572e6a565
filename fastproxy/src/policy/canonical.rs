//! The canonical form of a request's path and query, the only form rules are matched against
//! (SPEC-GPA.md section 5, with its BETTER).
//!
//! Path: percent-decoded exactly once; a decoded `?` splits off extra query pairs (the Guest
//! Proxy Agent does the same); control characters, `\`, `#`, empty segments (`//`), invalid
//! escapes, invalid UTF-8 and `..` above the root are refused; `.` and `..` are resolved
//! (RFC 3986 section 5.2.4); ASCII letters are lower-cased; a trailing `/` is dropped, so the
//! root is the empty string. Query: split on `&`, each piece on its first `=`, key and value
//! percent-decoded once (`+` stays a `+`) and lower-cased; pieces with an empty key are dropped;
//! duplicates are kept, so matching can see them.
//!
//! Trade-off: refusing what other servers would "repair" (`\`, `#`, `%u0074`, overlong UTF-8,
//! `//`) costs nothing for the platform's real clients and removes every way to make the proxy
//! and the upstream read two different paths. A [`CanonicalRequest`] is a scratch value that a
//! connection reuses: after the first requests its buffers have grown to size and
//! canonicalisation no longer allocates.

use thiserror::Error;

/// Why a path or query has no canonical form. Rules then refuse the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum CanonicalError {
    #[error("invalid percent escape")]
    InvalidEscape,
    #[error("path does not start with /")]
    NotAbsolute,
    #[error("empty path segment (//)")]
    EmptySegment,
    #[error("control character")]
    ControlCharacter,
    #[error("backslash in the path")]
    Backslash,
    #[error("fragment marker # in the target")]
    Fragment,
    #[error("path is not UTF-8 after decoding")]
    NotUtf8,
    #[error(".. climbs above the root")]
    AboveRoot,
    #[error("? in a rule path")]
    QueryInRulePath,
    #[error("target too long")]
    TooLong,
}

impl CanonicalError {
    pub fn as_str(self) -> &'static str {
        match self {
            CanonicalError::InvalidEscape => "invalid percent escape",
            CanonicalError::NotAbsolute => "path does not start with /",
            CanonicalError::EmptySegment => "empty path segment (//)",
            CanonicalError::ControlCharacter => "control character",
            CanonicalError::Backslash => "backslash in the path",
            CanonicalError::Fragment => "fragment marker # in the target",
            CanonicalError::NotUtf8 => "path is not UTF-8 after decoding",
            CanonicalError::AboveRoot => ".. climbs above the root",
            CanonicalError::QueryInRulePath => "? in a rule path",
            CanonicalError::TooLong => "target too long",
        }
    }
}

/// Offsets of one query pair in [`CanonicalRequest`]'s query buffer: the key is
/// `start..key_end`, the value `key_end..end` (stored back to back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PairRange {
    start: u32,
    key_end: u32,
    end: u32,
}

/// A request target in canonical form, in reusable buffers.
#[derive(Debug, Clone, Default)]
pub struct CanonicalRequest {
    /// Canonical path: decoded, dot segments resolved, lower-cased, no trailing `/`.
    path: Vec<u8>,
    /// Decoded, lower-cased keys and values, back to back.
    query: Vec<u8>,
    pairs: Vec<PairRange>,
}

impl CanonicalRequest {
    /// Empty buffers, sized for the platform's usual requests (so the first request already
    /// does not allocate).
    pub fn new() -> Self {
        CanonicalRequest {
            path: Vec::with_capacity(256),
            query: Vec::with_capacity(256),
            pairs: Vec::with_capacity(16),
        }
    }

    /// A canonical request from an origin-form target (`/path?query`); allocates. For tests
    /// and tools; the proxy reuses one value through [`CanonicalRequest::canonicalize`].
    pub fn from_target(target: &str) -> Result<Self, CanonicalError> {
        let mut canonical = CanonicalRequest::new();
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        canonical.canonicalize(path, query)?;
        Ok(canonical)
    }

    /// Replace the contents with the canonical form of `raw_path` and `raw_query` (both as
    /// received, still percent-encoded). On error the value is left empty.
    pub fn canonicalize(
        &mut self,
        raw_path: &str,
        raw_query: Option<&str>,
    ) -> Result<(), CanonicalError> {
        self.clear();
        let result = self.fill(raw_path.as_bytes(), raw_query.map(str::as_bytes));
        if result.is_err() {
            self.clear();
        }
        result
    }

    fn clear(&mut self) {
        self.path.clear();
        self.query.clear();
        self.pairs.clear();
    }

    fn fill(&mut self, raw_path: &[u8], raw_query: Option<&[u8]>) -> Result<(), CanonicalError> {
        let total = raw_path.len() + raw_query.map_or(0, <[u8]>::len);
        if total > u32::MAX as usize / 2 {
            return Err(CanonicalError::TooLong);
        }
        if raw_path.first() != Some(&b'/') {
            return Err(CanonicalError::NotAbsolute);
        }
        let question = decode_path(raw_path, &mut self.path)?;
        if std::str::from_utf8(&self.path).is_err() {
            return Err(CanonicalError::NotUtf8);
        }
        // GPA behaviour: an encoded `?` in the path starts more query pairs. They were decoded
        // once already (as part of the path) and are not decoded again.
        if let Some(q) = question {
            let (path, query, pairs) = (&self.path, &mut self.query, &mut self.pairs);
            for piece in path[q + 1..].split(|&b| b == b'&') {
                push_pair(piece, false, query, pairs)?;
            }
            self.path.truncate(q);
        }
        resolve_segments(&mut self.path)?;
        if let Some(raw_query) = raw_query {
            for piece in raw_query.split(|&b| b == b'&') {
                push_pair(piece, true, &mut self.query, &mut self.pairs)?;
            }
        }
        Ok(())
    }

    /// The canonical path (`""` is the root).
    pub fn path(&self) -> &str {
        // Checked to be UTF-8 when it was filled; resolving segments keeps whole segments.
        std::str::from_utf8(&self.path).unwrap_or_default()
    }

    pub(crate) fn path_bytes(&self) -> &[u8] {
        &self.path
    }

    /// The query pairs, decoded and lower-cased, in order, duplicates kept.
    pub fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.pairs.iter().map(|p| {
            (
                &self.query[p.start as usize..p.key_end as usize],
                &self.query[p.key_end as usize..p.end as usize],
            )
        })
    }

    /// How the values given for `key` compare with `required`.
    pub(crate) fn query_match(&self, key: &[u8], required: &[u8]) -> QueryMatch {
        let mut equal = false;
        let mut different = false;
        for (k, v) in self.pairs() {
            if k == key {
                if v == required {
                    equal = true;
                } else {
                    different = true;
                }
            }
        }
        match (equal, different) {
            (true, false) => QueryMatch::Equal,
            (true, true) => QueryMatch::Ambiguous,
            (false, _) => QueryMatch::Absent,
        }
    }
}

/// The values a request gives for one required query key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueryMatch {
    /// Present, and every value equals the required one.
    Equal,
    /// One value equals the required one and another does not: which one the upstream uses
    /// is its choice, so a rule must neither grant on it nor ignore it.
    Ambiguous,
    /// Absent, or no value equals the required one.
    Absent,
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The byte an escape at `input[i]` (a `%`) stands for: two hex digits must follow (a server
/// that tolerated anything else could decode differently, e.g. `%u0074`).
fn escaped(input: &[u8], i: usize) -> Result<u8, CanonicalError> {
    match (
        input.get(i + 1).copied().and_then(hex_value),
        input.get(i + 2).copied().and_then(hex_value),
    ) {
        (Some(h), Some(l)) => Ok((h << 4) | l),
        _ => Err(CanonicalError::InvalidEscape),
    }
}

/// Percent-decode a raw path into `out` (lower-cased) in one pass, refusing a raw `#` (a
/// fragment never belongs in a request target, RFC 9112 section 3.2, and a server that cut it
/// off would see another path) and decoded control characters and `\`. Returns where the first
/// decoded `?` landed in `out`.
fn decode_path(raw: &[u8], out: &mut Vec<u8>) -> Result<Option<usize>, CanonicalError> {
    if is_plain(raw) {
        out.extend_from_slice(raw);
        out.make_ascii_lowercase();
        return Ok(None);
    }
    out.reserve(raw.len());
    let mut question = None;
    let mut i = 0;
    while i < raw.len() {
        let mut b = raw[i];
        if b == b'%' {
            b = escaped(raw, i)?;
            i += 3;
        } else {
            if b == b'#' {
                return Err(CanonicalError::Fragment);
            }
            i += 1;
        }
        if is_control(b) {
            return Err(CanonicalError::ControlCharacter);
        }
        if b == b'\\' {
            return Err(CanonicalError::Backslash);
        }
        if b == b'?' && question.is_none() {
            question = Some(out.len());
        }
        out.push(b.to_ascii_lowercase());
    }
    Ok(question)
}

/// Whether `bytes` holds nothing that decoding or checking would change or refuse (no `%`,
/// `#`, `?`, `\\`, control character): the common case, copied in bulk. Written without an
/// early exit so that it vectorises.
fn is_plain(bytes: &[u8]) -> bool {
    !bytes.iter().fold(false, |special, &b| {
        special | (b < 0x20) | (b == 0x7f) | (b == b'%') | (b == b'#') | (b == b'?') | (b == b'\\')
    })
}

/// Append one query part to `out`, lower-cased, percent-decoded when `decode` (then a raw `#`
/// is refused, as in the path); control characters are refused.
fn push_query_part(part: &[u8], decode: bool, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    if is_plain(part) {
        let start = out.len();
        out.extend_from_slice(part);
        out[start..].make_ascii_lowercase();
        return Ok(());
    }
    out.reserve(part.len());
    let mut i = 0;
    while i < part.len() {
        let mut b = part[i];
        if decode && b == b'%' {
            b = escaped(part, i)?;
            i += 3;
        } else {
            if decode && b == b'#' {
                return Err(CanonicalError::Fragment);
            }
            i += 1;
        }
        if is_control(b) {
            return Err(CanonicalError::ControlCharacter);
        }
        out.push(b.to_ascii_lowercase());
    }
    Ok(())
}

/// Add one `key[=value]` piece to the query buffers: decoded when `decode` (a piece split off
/// the decoded path is not decoded twice), lower-cased; a piece with an empty key is dropped.
fn push_pair(
    piece: &[u8],
    decode: bool,
    query: &mut Vec<u8>,
    pairs: &mut Vec<PairRange>,
) -> Result<(), CanonicalError> {
    let (key, value) = match piece.iter().position(|&b| b == b'=') {
        Some(eq) => (&piece[..eq], &piece[eq + 1..]),
        None => (piece, &piece[piece.len()..]),
    };
    let start = query.len();
    push_query_part(key, decode, query)?;
    let key_end = query.len();
    if key_end == start {
        return Ok(());
    }
    push_query_part(value, decode, query)?;
    // Lengths were bounded in `fill`, so the offsets fit.
    pairs.push(PairRange {
        start: start as u32,
        key_end: key_end as u32,
        end: query.len() as u32,
    });
    Ok(())
}

/// Resolve `.` and `..` in a decoded absolute path, in place; drop a trailing `/`. Empty segments other than a final one (a trailing `/`) are refused.
fn resolve_segments(path: &mut Vec<u8>) -> Result<(), CanonicalError> {
    if path.first() != Some(&b'/') {
        return Err(CanonicalError::NotAbsolute);
    }
    let len = path.len();
    // `path[..w]` is the output so far; it never overtakes the read position `r`, which
    // always sits on a `/`.
    let mut w = 0;
    let mut r = 0;
    while r < len {
        let start = r + 1;
        let end = path[start..]
            .iter()
            .position(|&b| b == b'/')
            .map_or(len, |n| start + n);
        match &path[start..end] {
            b"" if end == len => {}
            b"" => return Err(CanonicalError::EmptySegment),
            b"." => {}
            b".." => {
                if w == 0 {
                    return Err(CanonicalError::AboveRoot);
                }
                w = path[..w].iter().rposition(|&b| b == b'/').unwrap_or(0);
            }
            _ => {
                path[w] = b'/';
                path.copy_within(start..end, w + 1);
                w += 1 + end - start;
            }
        }
        r = end;
    }
    path.truncate(w);
    Ok(())
}

/// The canonical form of a rule's privilege path: like a request path but not percent-decoded
/// (rules are written decoded, as GPA compares them) and without a query part.
pub fn canonical_rule_path(path: &str) -> Result<String, CanonicalError> {
    let bytes = path.as_bytes();
    if bytes.contains(&b'?') {
        return Err(CanonicalError::QueryInRulePath);
    }
    if bytes.contains(&b'#') {
        return Err(CanonicalError::Fragment);
    }
    if bytes.iter().any(|&b| is_control(b)) {
        return Err(CanonicalError::ControlCharacter);
    }
    if bytes.contains(&b'\\') {
        return Err(CanonicalError::Backslash);
    }
    let mut out = bytes.to_ascii_lowercase();
    resolve_segments(&mut out)?;
    String::from_utf8(out).map_err(|_| CanonicalError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(target: &str) -> Result<(String, Vec<(String, String)>), CanonicalError> {
        let c = CanonicalRequest::from_target(target)?;
        let pairs = c
            .pairs()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect();
        Ok((c.path().to_owned(), pairs))
    }

    #[test]
    fn paths_table() {
        let ok: &[(&str, &str)] = &[
            ("/", ""),
            ("/metadata/identity", "/metadata/identity"),
            ("/metadata/identity/", "/metadata/identity"),
            ("/Metadata/IDENTITY", "/metadata/identity"),
            ("/metadata/%69dentity", "/metadata/identity"),
            ("/metadata/%49DENTITY", "/metadata/identity"),
            ("/metadata%2Fidentity", "/metadata/identity"),
            ("/metadata/./identity", "/metadata/identity"),
            ("/metadata/x/../identity", "/metadata/identity"),
            ("/metadata/x/%2e%2E/identity", "/metadata/identity"),
            ("/metadata/identity/.", "/metadata/identity"),
            ("/metadata/identity/x/..", "/metadata/identity"),
            ("/metadata/identity/x/../", "/metadata/identity"),
            ("/.", ""),
            ("/a/..", ""),
            ("/%25", "/%"),
            ("/%2541", "/%41"),
            ("/a+b", "/a+b"),
            ("/caf%C3%A9", "/caf\u{e9}"),
            ("/...", "/..."),
            ("/.a/b.", "/.a/b."),
        ];
        for (raw, want) in ok {
            assert_eq!(canon(raw).map(|c| c.0).as_deref(), Ok(*want), "{raw}");
        }
        let bad: &[(&str, CanonicalError)] = &[
            ("", CanonicalError::NotAbsolute),
            ("metadata", CanonicalError::NotAbsolute),
            ("%2Fmetadata", CanonicalError::NotAbsolute),
            ("//metadata", CanonicalError::EmptySegment),
            ("/metadata//identity", CanonicalError::EmptySegment),
            ("/metadata/%2F/identity", CanonicalError::EmptySegment),
            ("/metadata/%2f%2fidentity", CanonicalError::EmptySegment),
            ("/metadata/identity//", CanonicalError::EmptySegment),
            ("/..", CanonicalError::AboveRoot),
            ("/a/../..", CanonicalError::AboveRoot),
            ("/%2e%2e/x", CanonicalError::AboveRoot),
            ("/a%00b", CanonicalError::ControlCharacter),
            ("/a%0Ab", CanonicalError::ControlCharacter),
            ("/a%7Fb", CanonicalError::ControlCharacter),
            ("/a%5Cb", CanonicalError::Backslash),
            ("/a\\b", CanonicalError::Backslash),
            ("/a%zz", CanonicalError::InvalidEscape),
            ("/a%2", CanonicalError::InvalidEscape),
            ("/a%", CanonicalError::InvalidEscape),
            ("/%u0074oken", CanonicalError::InvalidEscape),
            ("/a%FFb", CanonicalError::NotUtf8),
            ("/%C0%AE%C0%AE/x", CanonicalError::NotUtf8),
            ("/a#b", CanonicalError::Fragment),
            ("/a?b#c", CanonicalError::Fragment),
        ];
        for (raw, err) in bad {
            assert_eq!(canon(raw).map(|c| c.0), Err(*err), "{raw}");
        }
    }

    #[test]
    fn queries_table() {
        type Pairs = &'static [(&'static str, &'static str)];
        let cases: &[(&str, Pairs)] = &[
            ("/x", &[]),
            ("/x?", &[]),
            ("/x?a=1&b=2", &[("a", "1"), ("b", "2")]),
            ("/x?A=One", &[("a", "one")]),
            ("/x?%41=%42", &[("a", "b")]),
            ("/x?a=b%3Dc", &[("a", "b=c")]),
            ("/x?a=b=c", &[("a", "b=c")]),
            ("/x?a=1+2", &[("a", "1+2")]),
            ("/x?a%2Bb=1", &[("a+b", "1")]),
            ("/x?key&x=", &[("key", ""), ("x", "")]),
            ("/x?=v&&a=1", &[("a", "1")]),
            ("/x?a=1&a=2&a=1", &[("a", "1"), ("a", "2"), ("a", "1")]),
            ("/x?a=%2541", &[("a", "%41")]),
            (
                "/x?resource=https%3A%2F%2Fmanagement.azure.com",
                &[("resource", "https://management.azure.com")],
            ),
            // An encoded `?` in the path: what follows is query, decoded once only.
            ("/x%3Fa=1", &[("a", "1")]),
            ("/x%3Fa=1%26B=%2541", &[("a", "1"), ("b", "%41")]),
            ("/x%3Fa=1?b=2", &[("a", "1"), ("b", "2")]),
            ("/x%3F", &[]),
        ];
        for (raw, want) in cases {
            let (_, got) = canon(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(got, want, "{raw}");
        }
        assert_eq!(canon("/x%3Fa=1").map(|c| c.0).as_deref(), Ok("/x"));
        assert_eq!(canon("/x%3F/../y").map(|c| c.0).as_deref(), Ok("/x"));
        assert_eq!(canon("/x?a=%zz"), Err(CanonicalError::InvalidEscape));
        assert_eq!(canon("/x?a=%0d"), Err(CanonicalError::ControlCharacter));
        assert_eq!(canon("/x?a%00=1"), Err(CanonicalError::ControlCharacter));
    }

    #[test]
    fn duplicate_keys_are_visible_to_matching() {
        let c = CanonicalRequest::from_target("/t?resource=A&Resource=a&x=1").expect("ok");
        assert_eq!(c.query_match(b"resource", b"a"), QueryMatch::Equal);
        let c = CanonicalRequest::from_target("/t?resource=a&resource=b").expect("ok");
        assert_eq!(c.query_match(b"resource", b"a"), QueryMatch::Ambiguous);
        assert_eq!(c.query_match(b"resource", b"c"), QueryMatch::Absent);
        assert_eq!(c.query_match(b"other", b"a"), QueryMatch::Absent);
        let c = CanonicalRequest::from_target("/t%3Fresource=b?resource=a").expect("ok");
        assert_eq!(c.query_match(b"resource", b"a"), QueryMatch::Ambiguous);
    }

    #[test]
    fn rule_paths() {
        let cases: &[(&str, Result<&str, CanonicalError>)] = &[
            ("/", Ok("")),
            ("/Metadata/Identity/", Ok("/metadata/identity")),
            ("/metadata/./identity", Ok("/metadata/identity")),
            ("/metadata/%41", Ok("/metadata/%41")),
            ("", Err(CanonicalError::NotAbsolute)),
            ("metadata", Err(CanonicalError::NotAbsolute)),
            ("/a//b", Err(CanonicalError::EmptySegment)),
            ("/..", Err(CanonicalError::AboveRoot)),
            (
                "/machine?comp=goalstate",
                Err(CanonicalError::QueryInRulePath),
            ),
            ("/a\tb", Err(CanonicalError::ControlCharacter)),
        ];
        for (raw, want) in cases {
            assert_eq!(
                canonical_rule_path(raw).as_deref().map_err(|e| *e),
                *want,
                "{raw}"
            );
        }
    }

    #[test]
    fn reuse_clears_and_an_error_leaves_it_empty() {
        let mut c = CanonicalRequest::new();
        c.canonicalize("/a/b", Some("k=v")).expect("ok");
        assert_eq!(c.path(), "/a/b");
        assert!(c.canonicalize("/a//b", Some("k=v")).is_err());
        assert_eq!(c.path(), "");
        assert_eq!(c.pairs().count(), 0);
        c.canonicalize("/C", None).expect("ok");
        assert_eq!((c.path(), c.pairs().count()), ("/c", 0));
    }
}
