//! Authorization: a pure function of the caller and the request.
//!
//! Two layers. The built-in rules of SPEC-GPA.md section 5 (WireServer and HostGAPlugin are
//! root-only in every mode because they hand out the VM's secrets; IMDS is open to every local
//! caller) need only the kernel record. The Guest Proxy Agent's
//! advanced rules (privileges, roles, identities, role assignments, `defaultAccess`,
//! per-endpoint modes, local rule files) are parsed in [`model`], validated and compiled once
//! per change in [`compile`], and evaluated per request in [`evaluate`](mod@evaluate) over the
//! canonical form of the request ([`canonical`]); [`authorize`] runs both layers.
//!
//! Trade-off: everything here is pure (no I/O, no runtime), so the proxy, `rules explain`, the
//! benches and the fuzzers share one implementation; caller facts that cost a /proc or NSS read
//! come in through the [`CallerFacts`] trait, asked for only when a rule needs them.

use crate::identity::CallerRecord;

pub mod canonical;
pub mod compile;
#[cfg(feature = "runtime")]
pub mod enriched;
pub mod evaluate;
pub mod model;
pub mod source;
#[cfg(test)]
mod tests;

pub use canonical::{CanonicalError, CanonicalRequest};
pub use compile::{CompiledPolicy, CompiledRules, PolicyError};
pub use evaluate::{authorize, Basis, CallerFacts, Explanation, KnownCaller, Verdict};
pub use model::{
    apply_local_rules, local_rules_file_name, AuthorizationItem, AuthorizationRules, LocalFile,
    LocalOutcome, RuleId,
};

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// The endpoint is root-only and the caller's uid is not 0.
    RootOnly,
    /// A privilege matched the request; no identity assigned to it matched the caller.
    NoIdentity,
    /// A privilege matched but a required query key has conflicting values.
    AmbiguousQuery,
    /// The path extends a privilege's path inside a segment (never granted, never default).
    PartialSegment,
    /// No privilege matched and `defaultAccess` is deny.
    DefaultDeny,
    /// The request's path or query has no canonical form.
    InvalidRequest,
}

impl DenyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::RootOnly => "root only",
            DenyReason::NoIdentity => "rule: no matching identity",
            DenyReason::AmbiguousQuery => "rule: ambiguous query",
            DenyReason::PartialSegment => "rule: partial path segment",
            DenyReason::DefaultDeny => "rule: default deny",
            DenyReason::InvalidRequest => "rule: request not canonical",
        }
    }

    /// The rule name of the same denial let through by audit mode.
    pub fn audit_str(self) -> &'static str {
        match self {
            DenyReason::RootOnly => "audit: root only",
            DenyReason::NoIdentity => "audit: no matching identity",
            DenyReason::AmbiguousQuery => "audit: ambiguous query",
            DenyReason::PartialSegment => "audit: partial path segment",
            DenyReason::DefaultDeny => "audit: default deny",
            DenyReason::InvalidRequest => "audit: request not canonical",
        }
    }
}

/// The outcome of authorization, with the rule that decided. [`Verdict`] carries more (the
/// privilege and identity, whether audit mode let a deny through); this is its compact form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow(&'static str),
    Deny(DenyReason),
}

impl Decision {
    pub fn is_allowed(self) -> bool {
        matches!(self, Decision::Allow(_))
    }

    /// Short name of the deciding rule, for the access log. Allows that audit mode granted
    /// start with `audit:`.
    pub fn rule(self) -> &'static str {
        match self {
            Decision::Allow(rule) => rule,
            Decision::Deny(reason) => reason.as_str(),
        }
    }

    /// Whether audit mode let a denial through (the access log should say so).
    pub fn is_audit(self) -> bool {
        matches!(self, Decision::Allow(rule) if rule.starts_with("audit:"))
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
mod builtin_tests {
    use super::*;
    use crate::upstream::{EndpointKind, EndpointMode, GuardedEndpoint};
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
                let got = builtin_only(&caller, &ep);
                assert_eq!(got, allowed, "uid {uid} -> {kind} ({mode:?})");
            }
        }
        let disabled = GuardedEndpoint {
            kind: EndpointKind::WireServer,
            addr: dst,
            mode: EndpointMode::Disabled,
        };
        assert!(builtin_only(&CallerRecord::for_uid(1000, dst), &disabled));
    }

    /// The decision with no advanced rules in force: the built-in rules alone.
    fn builtin_only(caller: &CallerRecord, ep: &GuardedEndpoint) -> bool {
        let mut facts = *caller;
        authorize(
            &CompiledPolicy::builtin_only(),
            ep,
            &mut facts,
            "/",
            None,
            &mut CanonicalRequest::new(),
        )
        .is_allowed()
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
