//! The WireServer secure channel (SPEC-GPA.md section 6) and the request signatures it
//! enforces (sections 3 and 4).
//!
//! State: on or off per endpoint (`disabled`, `wireserver` = WireServer and HostGAPlugin,
//! `wireserverandimds` = all three), the status version (1.0 or 2.0) and the current key (guid,
//! 32-byte secret, incarnation), plus the previous key after a rotation, which keeps verifying
//! until the next rotation. It is set at start ([`crate::StandinConfig::secure_channel`]) and
//! changed at run time through [`SecureChannelControl`] or the control file
//! ([`crate::StandinConfig::control`]).
//!
//! Answers: `GET /secure-channel/status`, `POST /secure-channel/key` and `POST
//! /secure-channel/key/{guid}/key-attestation` (which must be signed with that key). While the
//! channel is on for an endpoint, every request to it must carry a valid
//! `x-ms-azure-host-authorization`, except the status and key acquisition and the
//! skip-signature requests (`PUT /vmAgentLog`, `POST /machine/?comp=telemetrydata`); otherwise
//! it is answered 401 with a JSON error. Each request's verdict is recorded
//! ([`crate::RecordedRequest::signature`]).
//!
//! Keys come from a test-only generator (std's randomly seeded SipHash over the time and a
//! counter): varied and unpredictable enough for tests, not cryptographically secure.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::http::{Request, Response};
use crate::signing::{self, AUTHORIZATION_HEADER, AUTHORIZATION_SCHEME};
use crate::{util, Endpoint};

const STATUS_PATH: &str = "/secure-channel/status";
const KEY_PATH: &str = "/secure-channel/key";
const ATTESTATION_SUFFIX: &str = "/key-attestation";

/// Which endpoints the secure channel covers (v1.0 `secureChannelState`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum SecureChannelState {
    /// No signatures required; the status names no key.
    #[default]
    #[value(name = "disabled")]
    Disabled,
    /// WireServer and HostGAPlugin enforce signatures; IMDS audits (accepts unsigned).
    #[value(name = "wireserver")]
    WireServer,
    /// WireServer, HostGAPlugin and IMDS enforce signatures.
    #[value(name = "wireserverandimds")]
    WireServerAndImds,
}

impl SecureChannelState {
    /// The v1.0 `secureChannelState` text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::WireServer => "wireserver",
            Self::WireServerAndImds => "wireserverandimds",
        }
    }

    /// The mode this state gives an endpoint (HostGAPlugin follows WireServer).
    pub fn mode(self, endpoint: Endpoint) -> AuthorizationMode {
        match (self, endpoint) {
            (Self::Disabled, _) => AuthorizationMode::Disabled,
            (Self::WireServer, Endpoint::Imds) => AuthorizationMode::Audit,
            _ => AuthorizationMode::Enforce,
        }
    }
}

impl std::fmt::Display for SecureChannelState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SecureChannelState {
    type Err = anyhow::Error;

    /// Case-insensitive.
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "disabled" => Ok(Self::Disabled),
            "wireserver" => Ok(Self::WireServer),
            "wireserverandimds" => Ok(Self::WireServerAndImds),
            _ => bail!(
                "unknown secure channel state {s:?} (disabled, wireserver, wireserverandimds)"
            ),
        }
    }
}

/// The shape of `GET /secure-channel/status`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
pub enum StatusVersion {
    /// `secureChannelState`.
    #[default]
    #[value(name = "1.0")]
    #[serde(rename = "1.0")]
    V1,
    /// `secureChannelEnabled` and `authorizationRules`.
    #[value(name = "2.0")]
    #[serde(rename = "2.0")]
    V2,
}

impl StatusVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "1.0",
            Self::V2 => "2.0",
        }
    }
}

impl std::fmt::Display for StatusVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for StatusVersion {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s.trim() {
            "1.0" | "1" => Ok(Self::V1),
            "2.0" | "2" => Ok(Self::V2),
            _ => bail!("unknown status version {s:?} (1.0, 2.0)"),
        }
    }
}

/// An endpoint's v2.0 `authorizationRules.<endpoint>.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthorizationMode {
    Disabled,
    Audit,
    Enforce,
}

impl AuthorizationMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::Audit => "audit",
            Self::Enforce => "enforce",
        }
    }
}

/// The secure channel's configuration at start, and a snapshot of it at run time
/// ([`SecureChannelControl::secure_channel`], where the key fields are always set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecureChannel {
    pub state: SecureChannelState,
    pub version: StatusVersion,
    /// The current key's guid; `None` at start generates one.
    pub key_guid: Option<String>,
    /// The current key, 64 hex digits (either case); `None` at start generates one.
    pub key_hex: Option<String>,
    /// `keyIncarnationId` of the current key; each rotation adds one.
    pub incarnation: u32,
}

impl Default for SecureChannel {
    /// Disabled, status 1.0, a generated key, incarnation 1.
    fn default() -> Self {
        Self {
            state: SecureChannelState::Disabled,
            version: StatusVersion::V1,
            key_guid: None,
            key_hex: None,
            incarnation: 1,
        }
    }
}

/// How the stand-in judged a request's `x-ms-azure-host-authorization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignatureCheck {
    /// Present and correct for the current or previous key. (A signature that was not
    /// required is still checked when present.)
    Valid,
    /// Required but absent: answered 401.
    Missing,
    /// Present but wrong (bad format, unknown key guid, HMAC mismatch, body too large to check):
    /// answered 401 when required, else only recorded.
    Invalid,
    /// Not required (channel off for the endpoint, an unsigned secure-channel request or a
    /// skip-signature request) and not sent.
    NotRequired,
}

impl SignatureCheck {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Missing => "missing",
            Self::Invalid => "invalid",
            Self::NotRequired => "not-required",
        }
    }
}

#[derive(Debug, Clone)]
struct Key {
    guid: String,
    secret: Vec<u8>,
    /// As handed out (uppercase unless configured otherwise).
    hex: String,
    incarnation: u32,
    /// Unix seconds.
    issued: u64,
}

impl Key {
    fn generate(incarnation: u32) -> Self {
        let secret = random_bytes(32);
        Self {
            guid: random_guid(),
            hex: signing::encode_hex(&secret).to_ascii_uppercase(),
            secret,
            incarnation,
            issued: util::unix_now(),
        }
    }
}

#[derive(Debug)]
struct Channel {
    state: SecureChannelState,
    version: StatusVersion,
    current: Key,
    previous: Option<Key>,
    /// Modification time and content of the control file last applied.
    control_seen: Option<(Option<SystemTime>, Vec<u8>)>,
}

impl Channel {
    fn rotate(&mut self) -> String {
        let next = Key::generate(self.current.incarnation.wrapping_add(1));
        let guid = next.guid.clone();
        self.previous = Some(std::mem::replace(&mut self.current, next));
        guid
    }

    fn key(&self, guid: &str) -> Option<&Key> {
        std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .find(|k| k.guid.eq_ignore_ascii_case(guid))
    }
}

/// Shared by every connection and by the [`SecureChannelControl`]s.
#[derive(Debug)]
pub(crate) struct Shared {
    channel: Mutex<Channel>,
    control: Option<PathBuf>,
}

/// Changes the running stand-in's secure channel (from any thread); cloned from
/// [`crate::StandinHandle::control`].
#[derive(Debug, Clone)]
pub struct SecureChannelControl(pub(crate) Arc<Shared>);

impl SecureChannelControl {
    /// A snapshot: state, version, current key (guid and hex) and its incarnation.
    pub fn secure_channel(&self) -> SecureChannel {
        let ch = self.0.lock();
        SecureChannel {
            state: ch.state,
            version: ch.version,
            key_guid: Some(ch.current.guid.clone()),
            key_hex: Some(ch.current.hex.clone()),
            incarnation: ch.current.incarnation,
        }
    }

    /// Turns the channel off or on for WireServer (+ HostGAPlugin) and IMDS; the key stays.
    pub fn set_secure_channel(&self, state: SecureChannelState) {
        self.0.lock().state = state;
    }

    /// Changes the shape of the status answer.
    pub fn set_status_version(&self, version: StatusVersion) {
        self.0.lock().version = version;
    }

    /// Issues a new key (new guid and secret, incarnation + 1) and returns its guid; the
    /// previous key keeps verifying until the next rotation.
    pub fn rotate_key(&self) -> String {
        self.0.lock().rotate()
    }
}

impl Shared {
    pub(crate) fn new(config: &SecureChannel, control: Option<PathBuf>) -> anyhow::Result<Self> {
        let mut key = Key::generate(config.incarnation);
        if let Some(guid) = &config.key_guid {
            if guid.trim().is_empty() || guid.chars().any(char::is_whitespace) {
                bail!("the secure channel key guid {guid:?} is empty or has blanks");
            }
            key.guid.clone_from(guid);
        }
        if let Some(hex) = &config.key_hex {
            key.secret = signing::decode_hex(hex)
                .filter(|k| k.len() == 32)
                .context("the secure channel key must be 64 hex digits")?;
            key.hex.clone_from(hex);
        }
        Ok(Self {
            channel: Mutex::new(Channel {
                state: config.state,
                version: config.version,
                current: key,
                previous: None,
                control_seen: None,
            }),
            control,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Channel> {
        match self.channel.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The channel, after applying the control file if it changed since last applied.
    fn current(&self) -> MutexGuard<'_, Channel> {
        let mut ch = self.lock();
        if let Some(path) = &self.control {
            apply_control(path, &mut ch);
        }
        ch
    }

    /// Judges the signature of a request before it is routed. A request that needed a valid
    /// signature and lacks one gets the 401 answer in the third element; the second is the key
    /// guid of a valid signature.
    pub(crate) fn check(
        &self,
        endpoint: Endpoint,
        req: &Request,
    ) -> (SignatureCheck, Option<String>, Option<Response>) {
        let ch = self.current();
        let (path, query) = req.path_and_query();
        let wireserver = endpoint == Endpoint::WireServer;
        let attestation = wireserver && attestation_guid(path).is_some();
        let exempt = (wireserver && (path == STATUS_PATH || path == KEY_PATH))
            || skips_signature(&req.method, path, query);
        let required =
            attestation || (!exempt && ch.state.mode(endpoint) == AuthorizationMode::Enforce);
        let Some(value) = req.header(AUTHORIZATION_HEADER) else {
            return if required {
                let reject = unauthorized(endpoint, "MissingSignature", "This request must carry x-ms-azure-host-authorization: Azure-HMAC-SHA256 <keyGuid> <signature>.");
                (SignatureCheck::Missing, None, Some(reject))
            } else {
                (SignatureCheck::NotRequired, None, None)
            };
        };
        match verify(&ch, req, path, query, value) {
            Ok(guid) => (SignatureCheck::Valid, Some(guid), None),
            Err(why) => {
                let reject = required.then(|| unauthorized(endpoint, "InvalidSignature", why));
                (SignatureCheck::Invalid, None, reject)
            }
        }
    }

    /// `GET /secure-channel/status`.
    pub(crate) fn status(&self) -> Response {
        let ch = self.current();
        let on = ch.state != SecureChannelState::Disabled;
        let mut status = json!({
            "authorizationScheme": AUTHORIZATION_SCHEME,
            "keyDeliveryMethod": "http",
            "keyIncarnationId": ch.current.incarnation,
            "keyGuid": if on { Value::from(ch.current.guid.as_str()) } else { Value::Null },
            "requiredClaimsHeaderPairs": ["isRoot"],
            "version": ch.version.as_str(),
        });
        match ch.version {
            StatusVersion::V1 => status["secureChannelState"] = ch.state.as_str().into(),
            StatusVersion::V2 => {
                let item = |name: &str, endpoint: Endpoint| {
                    let mode = ch.state.mode(endpoint).as_str();
                    json!({
                        "defaultAccess": "allow",
                        "mode": mode,
                        "id": format!("standin-{name}-{mode}"),
                        "rules": null,
                    })
                };
                status["secureChannelEnabled"] = on.into();
                status["authorizationRules"] = json!({
                    "imds": item("imds", Endpoint::Imds),
                    "wireserver": item("wireserver", Endpoint::WireServer),
                    "hostga": item("hostga", Endpoint::HostGaPlugin),
                });
            }
        }
        Response::json(200, &status)
    }

    /// `POST /secure-channel/key` with `{"authorizationScheme": "Azure-HMAC-SHA256"}`: the
    /// current key.
    pub(crate) fn acquire_key(&self, req: &Request) -> Response {
        let scheme = serde_json::from_slice::<Value>(&req.body)
            .ok()
            .and_then(|body| body.get("authorizationScheme")?.as_str().map(String::from));
        if scheme.as_deref() != Some(AUTHORIZATION_SCHEME) {
            return json_error(
                400,
                "InvalidRequest",
                "The body must be {\"authorizationScheme\": \"Azure-HMAC-SHA256\"}.",
            );
        }
        let ch = self.current();
        let key = &ch.current;
        Response::json(
            200,
            &json!({
                "authorizationScheme": AUTHORIZATION_SCHEME,
                "incarnationId": key.incarnation,
                "guid": key.guid,
                "issued": util::rfc3339(key.issued),
                "key": key.hex,
            }),
        )
    }

    /// `POST /secure-channel/key/{guid}/key-attestation`; `signed_by` is the key guid of the
    /// request's valid signature (routing only gets here with one).
    pub(crate) fn attest(&self, path: &str, signed_by: Option<&str>) -> Response {
        let guid = attestation_guid(path).unwrap_or_default();
        let ch = self.current();
        match (ch.key(guid), signed_by) {
            (Some(key), Some(signer)) if key.guid.eq_ignore_ascii_case(signer) => {
                Response::new(200, "application/json; charset=utf-8", "")
            }
            (None, _) => json_error(403, "UnknownKey", "No such key to attest."),
            _ => json_error(
                403,
                "WrongKey",
                "The attestation must be signed with the key it attests.",
            ),
        }
    }
}

/// `{guid}` of `/secure-channel/key/{guid}/key-attestation`.
pub(crate) fn attestation_guid(path: &str) -> Option<&str> {
    let guid = path
        .strip_prefix(KEY_PATH)?
        .strip_prefix('/')?
        .strip_suffix(ATTESTATION_SUFFIX)?;
    (!guid.is_empty() && !guid.contains('/')).then_some(guid)
}

/// `PUT /vmAgentLog` and `POST /machine/?comp=telemetrydata` (SPEC-GPA.md section 3), compared
/// lower-cased on path and query.
fn skips_signature(method: &str, path: &str, query: &str) -> bool {
    let target = if query.is_empty() {
        path.to_lowercase()
    } else {
        format!("{path}?{query}").to_lowercase()
    };
    matches!(
        (method, target.as_str()),
        ("PUT", "/vmagentlog") | ("POST", "/machine/?comp=telemetrydata")
    )
}

/// Checks `Azure-HMAC-SHA256 <guid> <hex>` against the current and previous key; the signing
/// key's guid, or why not.
fn verify(
    ch: &Channel,
    req: &Request,
    path: &str,
    query: &str,
    value: &str,
) -> Result<String, &'static str> {
    let mut parts = value.split_whitespace();
    let (Some(scheme), Some(guid), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(
            "x-ms-azure-host-authorization must be \"Azure-HMAC-SHA256 <keyGuid> <signature>\".",
        );
    };
    if scheme != AUTHORIZATION_SCHEME {
        return Err("Unknown authorization scheme.");
    }
    let Some(key) = ch.key(guid) else {
        return Err("Unknown or expired key guid.");
    };
    if req.body.len() < req.body_len {
        return Err("The body is too large to verify its signature.");
    }
    let headers = req.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()));
    let message = signing::string_to_sign(&req.method, &req.body, headers, path, query);
    if signing::verify_hmac(&key.secret, &message, signature) {
        Ok(key.guid.clone())
    } else {
        Err("The signature does not match the request.")
    }
}

fn json_error(status: u16, code: &str, message: &str) -> Response {
    Response::json(status, &json!({ "error": code, "message": message }))
}

fn unauthorized(endpoint: Endpoint, code: &str, message: &str) -> Response {
    let response = json_error(401, code, message);
    if endpoint == Endpoint::WireServer {
        response.with_header("x-ms-azure-host-date", util::http_date_now())
    } else {
        response
    }
}

/// Applies the control file when its content or modification time changed since last applied:
/// `{"state": "disabled"|"wireserver"|"wireserverandimds", "version": "1.0"|"2.0", "rotate":
/// true|false}`, every field optional. A missing file changes nothing (and forgets what was
/// applied, so the same content written again applies again); a bad one is reported on stderr
/// and ignored.
fn apply_control(path: &std::path::Path, ch: &mut Channel) {
    let content = match std::fs::read(path) {
        Ok(content) => content,
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("standin: cannot read control file {}: {e}", path.display());
            }
            ch.control_seen = None;
            return;
        }
    };
    let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    if ch
        .control_seen
        .as_ref()
        .is_some_and(|(t, c)| *t == mtime && *c == content)
    {
        return;
    }
    ch.control_seen = Some((mtime, content));
    let content = ch.control_seen.as_ref().map_or(&[][..], |(_, c)| c);
    match parse_control(content) {
        Ok((state, version, rotate)) => {
            if let Some(state) = state {
                ch.state = state;
            }
            if let Some(version) = version {
                ch.version = version;
            }
            if rotate {
                ch.rotate();
            }
        }
        Err(e) => eprintln!("standin: ignoring control file {}: {e:#}", path.display()),
    }
}

type ControlRequest = (Option<SecureChannelState>, Option<StatusVersion>, bool);

fn parse_control(content: &[u8]) -> anyhow::Result<ControlRequest> {
    let value: Value = serde_json::from_slice(content).context("not JSON")?;
    let Some(object) = value.as_object() else {
        bail!("not a JSON object");
    };
    let text = |name: &str| match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(anyhow::anyhow!("{name:?} must be a string")),
    };
    let state = text("state")?.map(|s| s.parse()).transpose()?;
    let version = text("version")?.map(|s| s.parse()).transpose()?;
    let rotate = match object.get("rotate") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => bail!("\"rotate\" must be true or false"),
    };
    Ok((state, version, rotate))
}

/// Test-only randomness: std's SipHash with a per-process random key, over the time, a
/// counter and the position. Not cryptographically secure.
fn random_bytes(n: usize) -> Vec<u8> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = RandomState::new();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        let mut h = seed.build_hasher();
        h.write_u128(nanos);
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_usize(out.len());
        out.extend_from_slice(&h.finish().to_le_bytes());
    }
    out.truncate(n);
    out
}

/// A random (version 4 layout) guid, lowercase.
fn random_guid() -> String {
    let mut b = random_bytes(16);
    b[6] = b[6] & 0x0f | 0x40;
    b[8] = b[8] & 0x3f | 0x80;
    let hex = signing::encode_hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_versions_parse() {
        for state in [
            SecureChannelState::Disabled,
            SecureChannelState::WireServer,
            SecureChannelState::WireServerAndImds,
        ] {
            assert_eq!(
                state.as_str().parse::<SecureChannelState>().ok(),
                Some(state)
            );
            assert_eq!(
                serde_json::to_value(state).expect("serialize"),
                state.as_str()
            );
        }
        assert_eq!(
            "WireServerAndIMDS".parse::<SecureChannelState>().ok(),
            Some(SecureChannelState::WireServerAndImds)
        );
        assert!("imds".parse::<SecureChannelState>().is_err());
        assert_eq!("2.0".parse::<StatusVersion>().ok(), Some(StatusVersion::V2));
        assert!("3.0".parse::<StatusVersion>().is_err());
    }

    #[test]
    fn modes_from_state() {
        use AuthorizationMode::*;
        let modes = |s: SecureChannelState| {
            [Endpoint::WireServer, Endpoint::HostGaPlugin, Endpoint::Imds].map(|e| s.mode(e))
        };
        assert_eq!(modes(SecureChannelState::Disabled), [Disabled; 3]);
        assert_eq!(
            modes(SecureChannelState::WireServer),
            [Enforce, Enforce, Audit]
        );
        assert_eq!(modes(SecureChannelState::WireServerAndImds), [Enforce; 3]);
    }

    #[test]
    fn skip_signature_requests() {
        assert!(skips_signature("PUT", "/vmAgentLog", ""));
        assert!(skips_signature("PUT", "/VMAGENTLOG", ""));
        assert!(skips_signature("POST", "/machine/", "comp=telemetrydata"));
        assert!(skips_signature("POST", "/Machine/", "comp=TelemetryData"));
        assert!(!skips_signature("POST", "/machine", "comp=telemetrydata"));
        assert!(!skips_signature(
            "POST",
            "/machine/",
            "comp=telemetrydata&x"
        ));
        assert!(!skips_signature("GET", "/vmAgentLog", ""));
        assert!(!skips_signature("PUT", "/vmAgentLog", "x=1"));
    }

    #[test]
    fn attestation_paths() {
        assert_eq!(
            attestation_guid("/secure-channel/key/abc-1/key-attestation"),
            Some("abc-1")
        );
        assert_eq!(
            attestation_guid("/secure-channel/key//key-attestation"),
            None
        );
        assert_eq!(
            attestation_guid("/secure-channel/key/a/b/key-attestation"),
            None
        );
        assert_eq!(attestation_guid("/secure-channel/key"), None);
        assert_eq!(attestation_guid("/secure-channel/status"), None);
    }

    #[test]
    fn keys_and_guids_vary() {
        let a = Key::generate(1);
        let b = Key::generate(1);
        assert_ne!(a.guid, b.guid);
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.secret.len(), 32);
        assert_eq!(a.hex.len(), 64);
        assert_eq!(signing::decode_hex(&a.hex), Some(a.secret.clone()));
        assert_eq!(a.guid.len(), 36);
        assert_eq!(a.guid.as_bytes()[14], b'4');
    }

    #[test]
    fn configured_keys() {
        let hex = "4A404E635266556A586E3272357538782F413F4428472B4B6250645367566B59";
        let config = SecureChannel {
            key_guid: Some("guid-1".into()),
            key_hex: Some(hex.into()),
            incarnation: 7,
            ..SecureChannel::default()
        };
        let control = SecureChannelControl(Arc::new(Shared::new(&config, None).expect("valid")));
        let snap = control.secure_channel();
        assert_eq!(snap.key_guid.as_deref(), Some("guid-1"));
        assert_eq!(snap.key_hex.as_deref(), Some(hex));
        assert_eq!(snap.incarnation, 7);
        let guid = control.rotate_key();
        let snap = control.secure_channel();
        assert_eq!(snap.key_guid, Some(guid));
        assert_eq!(snap.incarnation, 8);
        let bad = SecureChannel {
            key_hex: Some("abcd".into()),
            ..SecureChannel::default()
        };
        assert!(Shared::new(&bad, None).is_err());
        let bad = SecureChannel {
            key_guid: Some("a b".into()),
            ..SecureChannel::default()
        };
        assert!(Shared::new(&bad, None).is_err());
    }

    #[test]
    fn control_documents() {
        let parsed = parse_control(br#"{"state": "WireServer", "rotate": true}"#).expect("ok");
        assert_eq!(parsed, (Some(SecureChannelState::WireServer), None, true));
        let parsed = parse_control(br#"{"version": "2.0"}"#).expect("ok");
        assert_eq!(parsed, (None, Some(StatusVersion::V2), false));
        assert!(parse_control(b"{").is_err());
        assert!(parse_control(b"[]").is_err());
        assert!(parse_control(br#"{"state": "on"}"#).is_err());
        assert!(parse_control(br#"{"rotate": "yes"}"#).is_err());
    }
}
