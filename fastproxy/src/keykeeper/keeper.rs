//! The secure-channel loop (SPEC-GPA.md section 6.3), on a thread of its own with blocking
//! sockets: it polls WireServer's status, follows the modes, and latches the key the status
//! names (a stored one, or a new one acquired, stored, read back and attested). Its requests
//! go straight to WireServer from sockets carrying the proxy's mark.
//!
//! Failure never half-latches: a key is published to the proxy only after it was stored,
//! read back and (when new) attested. Every failure is a status message and a retry at the
//! next poll; the loop itself never stops on bad input.

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use thiserror::Error;
use tracing::{info, warn};

use super::clock::HostClock;
use super::status::{Modes, SecureChannelStatus, StatusError};
use crate::http::{parse_response, BodyKind, Limits};
use crate::signing::{string_to_sign, KeyError, SigningKey, SCHEME};

/// Where and how often the keeper talks to WireServer.
#[derive(Debug, Clone)]
pub struct KeeperSettings {
    pub wireserver: SocketAddrV4,
    pub mark: u32,
    /// Root-owned 0700 directory of `<guid>.key` files (0600).
    pub keys_dir: PathBuf,
    /// Poll period once the state is known (15 s on Azure).
    pub poll: Duration,
}

/// What the keeper publishes to the proxy, shared by every core.
#[derive(Debug, Default)]
pub struct ChannelState {
    /// The latched key; `None` while none is (requests then go unsigned).
    pub key: ArcSwapOption<SigningKey>,
    /// The modes of the last status; `None` before the first answer ("Unknown").
    pub modes: ArcSwapOption<Modes>,
    /// The authorization rules of the last v2.0 status, as delivered.
    pub rules: ArcSwapOption<serde_json::Value>,
    pub clock: HostClock,
    /// The last thing worth telling an operator (for status reporting).
    pub message: Mutex<String>,
}

impl ChannelState {
    /// The spec's state text: the modes, or `Unknown` before the first answer.
    pub fn state_text(&self) -> String {
        self.modes
            .load()
            .as_ref()
            .map_or_else(|| "Unknown".to_owned(), |m| m.state_text())
    }

    fn say(&self, message: String) {
        *self.message.lock().unwrap_or_else(|p| p.into_inner()) = message;
    }
}

#[derive(Debug, Error)]
pub enum KeeperError {
    #[error("WireServer unreachable at {0}")]
    Unreachable(SocketAddrV4, #[source] std::io::Error),
    #[error("WireServer answered {status} to {what}")]
    Status { what: &'static str, status: u16 },
    #[error("malformed reply to {0}")]
    Reply(&'static str),
    #[error(transparent)]
    StatusBody(#[from] StatusError),
    #[error("the key service answered an unusable key")]
    Key(#[from] KeyError),
    #[error("key store {path}")]
    Store {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Start the loop. Mode changes are sent on `modes` (the owner re-programs the kernel's
/// redirect table and the proxy's endpoint modes).
pub fn spawn(
    settings: KeeperSettings,
    state: Arc<ChannelState>,
    modes: mpsc::Sender<Modes>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("fastproxy-keeper".into())
        .spawn(move || {
            let keeper = Keeper { settings, state };
            let started = Instant::now();
            let mut last_modes: Option<Modes> = None;
            while !stop.load(Ordering::Relaxed) {
                match keeper.poll_once() {
                    Ok(now) => {
                        if last_modes != Some(now) {
                            info!(state = %now.state_text(), "secure channel state");
                            let _ = modes.send(now);
                            last_modes = Some(now);
                        }
                    }
                    Err(e) => {
                        let text = crate::telemetry::error_chain(&e);
                        warn!(error = %text, "secure channel");
                        keeper.state.say(text);
                    }
                }
                // 1 s while the state is unknown in the first 5 minutes, then the period.
                let period = if last_modes.is_none() && started.elapsed() < Duration::from_secs(300)
                {
                    Duration::from_secs(1)
                } else {
                    keeper.settings.poll
                };
                let until = Instant::now() + period;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        })
}

struct Keeper {
    settings: KeeperSettings,
    state: Arc<ChannelState>,
}

/// A reply: status, headers, body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(serde::Deserialize)]
struct KeyReply {
    guid: String,
    key: String,
}

impl Keeper {
    /// One poll: status, modes, key. Returns the modes now in force.
    fn poll_once(&self) -> Result<Modes, KeeperError> {
        let reply = self.request("GET", "/secure-channel/status", b"", None)?;
        if reply.status != 200 {
            return Err(KeeperError::Status {
                what: "the status request",
                status: reply.status,
            });
        }
        if self.state.clock.wants_sync() {
            if let Some(date) = reply
                .header("x-ms-azure-host-date")
                .or(reply.header("date"))
            {
                self.state.clock.sync_from(date);
            }
        }
        let status = SecureChannelStatus::parse(&reply.body)?;
        let modes = status.modes();
        if status.wants_key() {
            let guid = status.key_guid.clone().unwrap_or_default();
            let latched = self.state.key.load();
            if latched.as_ref().map(|k| k.guid()) != Some(guid.as_str()) {
                let key = self.latch(&guid)?;
                info!(guid = key.guid(), "key latched");
                self.state.key.store(Some(Arc::new(key)));
            }
        } else if self.state.key.load().is_some() {
            info!("secure channel disabled: requests go unsigned");
            self.state.key.store(None);
        }
        self.state.modes.store(Some(Arc::new(modes)));
        let rules = status.authorization_rules.clone().filter(|r| !r.is_null());
        if rules.as_ref() != self.state.rules.load().as_deref() {
            self.state.rules.store(rules.map(Arc::new));
        }
        self.state
            .say(format!("secure channel: {}", modes.state_text()));
        Ok(modes)
    }

    /// The key named `guid`: the stored one, or a new one acquired, stored, read back and
    /// attested.
    fn latch(&self, guid: &str) -> Result<SigningKey, KeeperError> {
        let dir = &self.settings.keys_dir;
        if let Some(stored) = read_key(dir, guid)? {
            return Ok(stored);
        }
        let body = format!(r#"{{"authorizationScheme": "{SCHEME}"}}"#);
        let reply = self.request("POST", "/secure-channel/key", body.as_bytes(), None)?;
        if reply.status != 200 {
            return Err(KeeperError::Status {
                what: "the key request",
                status: reply.status,
            });
        }
        let fresh: KeyReply = serde_json::from_slice(&reply.body)
            .map_err(|_| KeeperError::Reply("the key request"))?;
        let key = SigningKey::from_hex(&fresh.guid, &fresh.key)?;
        write_key(dir, &fresh.guid, &fresh.key)?;
        let read_back = read_key(dir, &fresh.guid)?.ok_or(KeeperError::Reply("the stored key"))?;
        if !read_back.same_key(&key) {
            return Err(KeeperError::Reply("the stored key (read back differently)"));
        }
        let path = format!("/secure-channel/key/{}/key-attestation", fresh.guid);
        let attested = match self.request("POST", &path, b"", Some(&key)) {
            Ok(reply) if reply.status == 200 => Ok(()),
            Ok(reply) => Err(KeeperError::Status {
                what: "the key attestation",
                status: reply.status,
            }),
            Err(e) => Err(e),
        };
        if let Err(e) = attested {
            // A stored key is latched without attestation on the next poll: an unattested
            // one must not stay stored.
            if let Ok(path) = key_path(dir, &fresh.guid) {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
        Ok(key)
    }

    /// One request to WireServer, from a marked socket, with the claims and date headers,
    /// signed with `key` when given.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        key: Option<&SigningKey>,
    ) -> Result<Reply, KeeperError> {
        wire_request(
            self.settings.wireserver,
            self.settings.mark,
            &self.state.clock,
            method,
            path,
            body,
            "application/json",
            key,
        )
    }
}

/// One request to WireServer, from a marked socket, with the claims and date headers,
/// signed with `key` when given. `Connection: close`: the reply ends at end of stream.
#[allow(clippy::too_many_arguments)]
pub fn wire_request(
    addr: SocketAddrV4,
    mark: u32,
    clock: &HostClock,
    method: &str,
    path: &str,
    body: &[u8],
    content_type: &str,
    key: Option<&SigningKey>,
) -> Result<Reply, KeeperError> {
    let unreachable = |e| KeeperError::Unreachable(addr, e);
    let socket = Socket::new(Domain::IPV4, Type::STREAM.cloexec(), Some(Protocol::TCP))
        .map_err(unreachable)?;
    socket.set_mark(mark).map_err(unreachable)?;
    socket
        .connect_timeout(
            &SockAddr::from(SocketAddr::V4(addr)),
            Duration::from_secs(5),
        )
        .map_err(unreachable)?;
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(unreachable)?;
    socket
        .set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(unreachable)?;
    let mut stream = std::net::TcpStream::from(socket);

    let host = if addr.port() == 80 {
        addr.ip().to_string()
    } else {
        addr.to_string()
    };
    let mut headers: Vec<(&str, String)> = vec![
        ("Host", host),
        ("Metadata", "True".into()),
        ("x-ms-azure-host-claims", r#"{ "isRoot": "true"}"#.into()),
        ("x-ms-azure-host-date", clock.http_date()),
        ("Connection", "close".into()),
    ];
    if method == "POST" {
        headers.push(("Content-Length", body.len().to_string()));
        if !body.is_empty() {
            headers.push(("Content-Type", content_type.into()));
        }
    }
    if let Some(key) = key {
        let (raw_path, query) = path
            .split_once('?')
            .map_or((path, None), |(p, q)| (p, Some(q)));
        let mut input = Vec::new();
        string_to_sign(
            &mut input,
            method,
            body,
            headers.iter().map(|(n, v)| (*n, v.as_bytes())),
            raw_path,
            query,
        );
        let mut value = String::new();
        key.authorization(&input, &mut value);
        headers.push(("x-ms-azure-host-authorization", value));
    }
    let mut out = format!("{method} {path} HTTP/1.1\r\n").into_bytes();
    for (name, value) in &headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    stream.write_all(&out).map_err(unreachable)?;

    let mut raw = Vec::new();
    Read::by_ref(&mut stream)
        .take(1024 * 1024)
        .read_to_end(&mut raw)
        .map_err(unreachable)?;
    let head = parse_response(&raw, false, &Limits::default())
        .map_err(|_| KeeperError::Reply("a WireServer request"))?
        .ok_or(KeeperError::Reply("a WireServer request (truncated head)"))?;
    let rest = &raw[head.head_len..];
    let body = match head.body {
        BodyKind::Length(n) => rest
            .get(..usize::try_from(n).unwrap_or(usize::MAX))
            .ok_or(KeeperError::Reply("a WireServer request (truncated body)"))?,
        BodyKind::CloseDelimited => rest,
        BodyKind::Chunked => return Err(KeeperError::Reply("a WireServer request (chunked)")),
    };
    Ok(Reply {
        status: head.status,
        headers: head
            .fields
            .iter()
            .map(|f| {
                (
                    f.name.to_owned(),
                    String::from_utf8_lossy(f.value).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    })
}

fn key_path(dir: &Path, guid: &str) -> Result<PathBuf, KeeperError> {
    if guid.is_empty() || !guid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(KeeperError::Reply("a key guid (not a guid)"));
    }
    Ok(dir.join(format!("{guid}.key")))
}

/// The stored key for `guid`, if any.
fn read_key(dir: &Path, guid: &str) -> Result<Option<SigningKey>, KeeperError> {
    let path = key_path(dir, guid)?;
    match std::fs::read_to_string(&path) {
        Ok(hex) => Ok(Some(SigningKey::from_hex(guid, hex.trim())?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(KeeperError::Store { path, source }),
    }
}

/// Store a key: the directory root-only (0700), the file written to a temporary name, synced,
/// and renamed into place, mode 0600.
fn write_key(dir: &Path, guid: &str, hex: &str) -> Result<(), KeeperError> {
    let store = |path: &Path| {
        let path = path.to_owned();
        move |source| KeeperError::Store { path, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(store(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(store(dir))?;
    let path = key_path(dir, guid)?;
    let tmp = dir.join(format!(".{guid}.key.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(store(&tmp))?;
    file.write_all(hex.as_bytes()).map_err(store(&tmp))?;
    file.sync_all().map_err(store(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(store(&path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stored_private_and_read_back() {
        let dir = std::env::temp_dir().join(format!("fastproxy-keys-{}", std::process::id()));
        let hex = "4A404E635266556A586E3272357538782F413F4428472B4B6250645367566B59";
        write_key(&dir, "1234-abcd", hex).expect("stored");
        let mode = std::fs::metadata(dir.join("1234-abcd.key"))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(&dir).expect("dir").permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let key = read_key(&dir, "1234-abcd").expect("read").expect("present");
        assert!(key.same_key(&SigningKey::from_hex("1234-abcd", hex).expect("key")));
        assert!(read_key(&dir, "other").expect("read").is_none());
        assert!(
            key_path(&dir, "../etc/passwd").is_err(),
            "a guid cannot escape the directory"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
