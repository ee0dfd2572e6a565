//! Validated, typed configuration; each module takes its own part.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use crate::http::Limits;
use crate::upstream::{EndpointKind, EndpointMode, EndpointTable};

/// The proxy's default listening address: loopback, on a privileged port so that no
/// unprivileged process can take it over while fastproxy is down.
pub const DEFAULT_LISTEN: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 308);
/// SO_MARK of the proxy's own upstream sockets; the kernel programs skip marked sockets.
/// Setting a mark needs CAP_NET_ADMIN, so an unprivileged process cannot claim it.
pub const DEFAULT_MARK: u32 = 0x6670_7879; // "fpxy"

/// Where the pinned programs and maps live (a directory in a bpf file system).
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/fastproxy";

/// A configuration value that cannot be used, naming the field and the reason.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid {field}: {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: String,
}

/// Deadlines of the proxy path (DESIGN.md section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub header: Duration,
    pub idle: Duration,
    pub upstream_connect: Duration,
    pub upstream_head: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header: Duration::from_secs(10),
            idle: Duration::from_secs(15),
            upstream_connect: Duration::from_secs(5),
            upstream_head: Duration::from_secs(30),
        }
    }
}

/// Everything the proxy needs to run.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub listen: SocketAddrV4,
    /// Worker threads, one runtime and one listener each; 0 = one per core.
    pub workers: usize,
    pub mark: u32,
    pub endpoints: EndpointTable,
    pub limits: Limits,
    pub timeouts: Timeouts,
    /// Cgroup (v2) directory to attach to; `None` = the cgroup-v2 root.
    pub cgroup: Option<PathBuf>,
    /// Sockets of other network namespaces: refused (false, default) or passed unguarded.
    pub foreign_netns_pass: bool,
    /// Directory in a bpf file system for the pinned programs and maps.
    pub pin_dir: PathBuf,
    /// Refuse non-root callers of root-only endpoints in enforce mode in the kernel (EPERM)
    /// instead of in the proxy (403).
    pub kernel_deny: bool,
    /// Response bodies with at least this many bytes still to relay are spliced (io_uring
    /// runtime only); 0 = always copy.
    pub splice_threshold: u64,
    /// Connections open at once, in all.
    pub max_connections: usize,
    /// Connections open at once per uid.
    pub max_connections_per_uid: u32,
    /// Of `max_connections`, how many only root may use.
    pub root_reserved_connections: usize,
}

/// Default splice threshold, chosen by measurement (docs/BENCHMARKS.md).
pub const DEFAULT_SPLICE_THRESHOLD: u64 = 256 * 1024;

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            listen: DEFAULT_LISTEN,
            workers: 0,
            mark: DEFAULT_MARK,
            endpoints: EndpointTable::azure(),
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            cgroup: None,
            foreign_netns_pass: false,
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            kernel_deny: false,
            splice_threshold: DEFAULT_SPLICE_THRESHOLD,
            max_connections: 1024,
            max_connections_per_uid: 64,
            root_reserved_connections: 32,
        }
    }
}

impl ProxySettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.listen.ip().is_loopback() {
            return Err(ConfigError {
                field: "listen",
                reason: format!("{} is not a loopback address", self.listen),
            });
        }
        if self.listen.port() == 0 || self.listen.port() >= 1024 {
            return Err(ConfigError {
                field: "listen",
                reason: format!(
                    "port {} is not a privileged port (1-1023)",
                    self.listen.port()
                ),
            });
        }
        if self.mark == 0 {
            return Err(ConfigError {
                field: "mark",
                reason: "0 means unmarked; the proxy's own sockets need a mark".into(),
            });
        }
        for (field, value) in [
            ("header-timeout", self.timeouts.header),
            ("idle-timeout", self.timeouts.idle),
            ("upstream-connect-timeout", self.timeouts.upstream_connect),
            ("upstream-head-timeout", self.timeouts.upstream_head),
        ] {
            if value.is_zero() {
                return Err(ConfigError {
                    field,
                    reason: "must be at least 1 second".into(),
                });
            }
        }
        if self.root_reserved_connections >= self.max_connections {
            return Err(ConfigError {
                field: "root-reserved-connections",
                reason: format!(
                    "{} leaves no connection for other users (max-connections is {})",
                    self.root_reserved_connections, self.max_connections
                ),
            });
        }
        if self.max_connections_per_uid == 0 {
            return Err(ConfigError {
                field: "max-connections-per-uid",
                reason: "must be at least 1".into(),
            });
        }
        for e in self.endpoints.iter() {
            if e.addr == self.listen {
                return Err(ConfigError {
                    field: "endpoint",
                    reason: format!("{} points at the proxy itself", e.kind),
                });
            }
        }
        Ok(())
    }
}

/// Parse `NAME=MODE` (e.g. `imds=disabled`).
pub fn parse_mode_override(spec: &str) -> Result<(EndpointKind, EndpointMode), ConfigError> {
    let err = |reason: String| ConfigError {
        field: "mode",
        reason,
    };
    let (name, mode) = spec
        .split_once('=')
        .ok_or_else(|| err(format!("{spec:?} is not NAME=MODE")))?;
    Ok((name.parse().map_err(err)?, mode.parse().map_err(err)?))
}

/// Parse `NAME=IP:PORT` (e.g. `wireserver=127.100.0.16:80`).
pub fn parse_endpoint_override(spec: &str) -> Result<(EndpointKind, SocketAddrV4), ConfigError> {
    let err = |reason: String| ConfigError {
        field: "endpoint",
        reason,
    };
    let (name, addr) = spec
        .split_once('=')
        .ok_or_else(|| err(format!("{spec:?} is not NAME=IP:PORT")))?;
    let kind = name.parse::<EndpointKind>().map_err(err)?;
    let addr = addr
        .parse::<SocketAddrV4>()
        .map_err(|e| err(format!("{addr:?}: {e}")))?;
    Ok((kind, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(ProxySettings::default().validate(), Ok(()));
    }

    #[test]
    fn errors_name_the_field() {
        let mut s = ProxySettings {
            listen: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 3080),
            ..ProxySettings::default()
        };
        let e = s.validate().expect_err("unprivileged port");
        assert_eq!(e.field, "listen");
        assert!(e.to_string().contains("privileged"));
        s.listen = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 308);
        assert_eq!(s.validate().map_err(|e| e.field), Err("listen"));
        s.listen = DEFAULT_LISTEN;
        s.mark = 0;
        assert_eq!(s.validate().map_err(|e| e.field), Err("mark"));
    }

    #[test]
    fn endpoint_overrides() {
        assert_eq!(
            parse_endpoint_override("imds=127.100.0.254:80"),
            Ok((
                EndpointKind::Imds,
                SocketAddrV4::new(Ipv4Addr::new(127, 100, 0, 254), 80)
            ))
        );
        assert!(parse_endpoint_override("imds").is_err());
        assert!(parse_endpoint_override("dns=1.2.3.4:53").is_err());
        assert!(parse_endpoint_override("imds=1.2.3.4").is_err());
        assert_eq!(
            parse_mode_override("IMDS=Disabled"),
            Ok((EndpointKind::Imds, EndpointMode::Disabled))
        );
        assert_eq!(
            parse_mode_override("imds=off").map_err(|e| e.field),
            Err("mode")
        );
    }
}
