//! The guarded endpoints and the way to them.
//!
//! The table is configuration: on a VM it holds the platform's three endpoints, in tests
//! loopback stand-ins. Requests are routed only by the kernel-recorded original destination,
//! never by the Host header or the request target.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::str::FromStr;

#[cfg(feature = "runtime")]
pub mod connect;

/// Which platform service an endpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndpointKind {
    WireServer,
    HostGaPlugin,
    Imds,
}

impl EndpointKind {
    pub const ALL: [EndpointKind; 3] = [
        EndpointKind::WireServer,
        EndpointKind::HostGaPlugin,
        EndpointKind::Imds,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EndpointKind::WireServer => "wireserver",
            EndpointKind::HostGaPlugin => "hostga",
            EndpointKind::Imds => "imds",
        }
    }

    /// The platform's address for this service.
    pub fn azure_address(self) -> SocketAddrV4 {
        match self {
            EndpointKind::WireServer => SocketAddrV4::new(Ipv4Addr::new(168, 63, 129, 16), 80),
            EndpointKind::HostGaPlugin => SocketAddrV4::new(Ipv4Addr::new(168, 63, 129, 16), 32526),
            EndpointKind::Imds => SocketAddrV4::new(Ipv4Addr::new(169, 254, 169, 254), 80),
        }
    }
}

impl fmt::Display for EndpointKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for EndpointKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EndpointKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown endpoint {s:?}: expected wireserver, hostga or imds"))
    }
}

/// How an endpoint is guarded (SPEC-GPA.md section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EndpointMode {
    /// Not guarded at all: the kernel does not redirect it.
    Disabled,
    /// Redirected and logged; only the built-in rules refuse.
    Audit,
    /// Redirected and enforced.
    #[default]
    Enforce,
}

impl EndpointMode {
    pub fn name(self) -> &'static str {
        match self {
            EndpointMode::Disabled => "disabled",
            EndpointMode::Audit => "audit",
            EndpointMode::Enforce => "enforce",
        }
    }
}

impl FromStr for EndpointMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            EndpointMode::Disabled,
            EndpointMode::Audit,
            EndpointMode::Enforce,
        ]
        .into_iter()
        .find(|m| m.name().eq_ignore_ascii_case(s))
        .ok_or_else(|| format!("unknown mode {s:?}: expected disabled, audit or enforce"))
    }
}

/// One guarded destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardedEndpoint {
    pub kind: EndpointKind,
    pub addr: SocketAddrV4,
    pub mode: EndpointMode,
}

impl GuardedEndpoint {
    /// Whether only root may ever call it (the built-in rule of WireServer and HostGAPlugin).
    pub fn root_only(&self) -> bool {
        matches!(
            self.kind,
            EndpointKind::WireServer | EndpointKind::HostGaPlugin
        )
    }
}

/// All guarded destinations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointTable {
    endpoints: Vec<GuardedEndpoint>,
}

impl EndpointTable {
    /// The platform's real endpoints.
    pub fn azure() -> Self {
        EndpointTable {
            endpoints: EndpointKind::ALL
                .into_iter()
                .map(|kind| GuardedEndpoint {
                    kind,
                    addr: kind.azure_address(),
                    mode: EndpointMode::Enforce,
                })
                .collect(),
        }
    }

    /// Replace the address of one endpoint (tests point them at stand-ins).
    pub fn set(&mut self, kind: EndpointKind, addr: SocketAddrV4) {
        for e in &mut self.endpoints {
            if e.kind == kind {
                e.addr = addr;
            }
        }
    }

    /// The same endpoints with the modes of a secure-channel status.
    pub fn with_modes(
        &self,
        wireserver: EndpointMode,
        hostga: EndpointMode,
        imds: EndpointMode,
    ) -> EndpointTable {
        let mut table = self.clone();
        table.set_mode(EndpointKind::WireServer, wireserver);
        table.set_mode(EndpointKind::HostGaPlugin, hostga);
        table.set_mode(EndpointKind::Imds, imds);
        table
    }

    /// Set the mode of one endpoint.
    pub fn set_mode(&mut self, kind: EndpointKind, mode: EndpointMode) {
        for e in &mut self.endpoints {
            if e.kind == kind {
                e.mode = mode;
            }
        }
    }

    /// The endpoint a connection was originally aimed at.
    pub fn by_addr(&self, addr: SocketAddrV4) -> Option<GuardedEndpoint> {
        self.endpoints.iter().copied().find(|e| e.addr == addr)
    }

    pub fn by_kind(&self, kind: EndpointKind) -> Option<GuardedEndpoint> {
        self.endpoints.iter().copied().find(|e| e.kind == kind)
    }

    pub fn iter(&self) -> impl Iterator<Item = &GuardedEndpoint> {
        self.endpoints.iter()
    }

    /// Whether a Host header value names a guarded endpoint other than `destination` (the
    /// kernel-recorded one): a request that says one endpoint and goes to another is refused.
    /// Hosts that name no guarded endpoint (names, other addresses) are no conflict.
    pub fn host_names_another(&self, host: &[u8], destination: &GuardedEndpoint) -> bool {
        let Ok(host) = std::str::from_utf8(host) else {
            return false;
        };
        let (ip, port) = match host.rsplit_once(':') {
            Some((ip, port)) => match port.parse::<u16>() {
                Ok(port) => (ip, port),
                Err(_) => return true,
            },
            None => (host, 80),
        };
        let Ok(ip) = ip.parse::<Ipv4Addr>() else {
            return false;
        };
        let named = SocketAddrV4::new(ip, port);
        named != destination.addr && self.endpoints.iter().any(|e| e.addr == named)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_naming_another_endpoint_is_a_conflict() {
        let t = EndpointTable::azure();
        let ws = t.by_kind(EndpointKind::WireServer).expect("ws");
        let ga = t.by_kind(EndpointKind::HostGaPlugin).expect("ga");
        let cases: &[(&str, &GuardedEndpoint, bool)] = &[
            ("168.63.129.16", &ws, false),
            ("168.63.129.16:80", &ws, false),
            ("168.63.129.16:32526", &ws, true),
            ("169.254.169.254", &ws, true),
            ("168.63.129.16:32526", &ga, false),
            ("168.63.129.16", &ga, true),
            ("metadata.azure.internal", &ws, false),
            ("10.0.0.4:8080", &ws, false),
            ("168.63.129.16:notaport", &ws, true),
        ];
        for (host, dst, conflict) in cases {
            assert_eq!(
                t.host_names_another(host.as_bytes(), dst),
                *conflict,
                "{host} -> {}",
                dst.kind
            );
        }
    }

    #[test]
    fn routes_by_exact_address_and_port() {
        let t = EndpointTable::azure();
        let ws = SocketAddrV4::new(Ipv4Addr::new(168, 63, 129, 16), 80);
        assert_eq!(
            t.by_addr(ws).map(|e| e.kind),
            Some(EndpointKind::WireServer)
        );
        let dns = SocketAddrV4::new(Ipv4Addr::new(168, 63, 129, 16), 53);
        assert_eq!(t.by_addr(dns), None);
        assert_eq!(
            "HostGA".parse::<EndpointKind>(),
            Ok(EndpointKind::HostGaPlugin)
        );
        assert!("metadata".parse::<EndpointKind>().is_err());
        assert_eq!("Audit".parse::<EndpointMode>(), Ok(EndpointMode::Audit));
        assert!("off".parse::<EndpointMode>().is_err());
    }
}
