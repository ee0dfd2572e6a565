//! Authorization: a pure function of the caller and the request.
//!
//! The built-in rules of SPEC-GPA.md section 5: WireServer and HostGAPlugin are root-only in
//! every mode (they hand out the VM's secrets), IMDS is open to every local caller.

use crate::identity::CallerRecord;
use crate::upstream::{EndpointKind, EndpointMode, GuardedEndpoint};

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// The endpoint is root-only and the caller's uid is not 0.
    RootOnly,
}

impl DenyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::RootOnly => "root only",
        }
    }
}

/// The outcome of authorization, with the rule that decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow(&'static str),
    Deny(DenyReason),
}

impl Decision {
    pub fn is_allowed(self) -> bool {
        matches!(self, Decision::Allow(_))
    }

    /// Short name of the deciding rule, for the access log.
    pub fn rule(self) -> &'static str {
        match self {
            Decision::Allow(rule) => rule,
            Decision::Deny(reason) => reason.as_str(),
        }
    }
}

/// Evaluate the built-in rules for a request to `endpoint`. A `disabled` endpoint allows
/// everything (it is normally not even redirected); the root-only rule holds in audit mode too.
pub fn evaluate(caller: &CallerRecord, endpoint: &GuardedEndpoint) -> Decision {
    if endpoint.mode == EndpointMode::Disabled {
        return Decision::Allow("mode disabled");
    }
    match endpoint.kind {
        EndpointKind::WireServer | EndpointKind::HostGaPlugin if caller.is_root() => {
            Decision::Allow("builtin: root")
        }
        EndpointKind::WireServer | EndpointKind::HostGaPlugin => {
            Decision::Deny(DenyReason::RootOnly)
        }
        EndpointKind::Imds => Decision::Allow("builtin: imds open"),
    }
}

/// The `x-ms-azure-host-claims` value (SPEC-GPA.md section 3, exactly this text).
pub fn claims_header(caller: &CallerRecord) -> &'static str {
    if caller.is_root() {
        r#"{ "isRoot": "true"}"#
    } else {
        r#"{ "isRoot": "false"}"#
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    #[test]
    fn builtin_rules_table() {
        let dst = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 80);
        let cases = [
            (0, EndpointKind::WireServer, true),
            (0, EndpointKind::HostGaPlugin, true),
            (0, EndpointKind::Imds, true),
            (1000, EndpointKind::WireServer, false),
            (65534, EndpointKind::HostGaPlugin, false),
            (65534, EndpointKind::Imds, true),
        ];
        for mode in [EndpointMode::Audit, EndpointMode::Enforce] {
            for (uid, kind, allowed) in cases {
                let caller = CallerRecord::for_uid(uid, dst);
                let ep = GuardedEndpoint {
                    kind,
                    addr: dst,
                    mode,
                };
                let got = evaluate(&caller, &ep).is_allowed();
                assert_eq!(got, allowed, "uid {uid} -> {kind} ({mode:?})");
            }
        }
        let disabled = GuardedEndpoint {
            kind: EndpointKind::WireServer,
            addr: dst,
            mode: EndpointMode::Disabled,
        };
        assert!(evaluate(&CallerRecord::for_uid(1000, dst), &disabled).is_allowed());
    }

    #[test]
    fn claims_text_is_exact() {
        let dst = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 80);
        assert_eq!(
            claims_header(&CallerRecord::for_uid(0, dst)),
            "{ \"isRoot\": \"true\"}"
        );
        assert_eq!(
            claims_header(&CallerRecord::for_uid(7, dst)),
            "{ \"isRoot\": \"false\"}"
        );
    }
}
