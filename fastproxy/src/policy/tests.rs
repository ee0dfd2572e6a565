//! End-to-end table tests of the policy layer: JSON → compile → authorize, including bypass
//! attempts. Each case states the caller, the request target and the expected basis.

use std::net::{Ipv4Addr, SocketAddrV4};

use base64::Engine as _;

use super::*;
use crate::upstream::{EndpointKind, EndpointMode, GuardedEndpoint};

const IMDS_RULES: &str = r#"{
    "defaultAccess": "deny", "mode": "enforce", "id": "imds-1",
    "rules": {
        "privileges": [
            {"name": "token", "path": "/metadata/identity/oauth2/token",
             "queryParameters": {"resource": "https://management.azure.com"}},
            {"name": "instance", "path": "/metadata/instance/"},
            {"name": "identity", "path": "/Metadata/Identity"}
        ],
        "roles": [
            {"name": "tokenReader", "privileges": ["token"]},
            {"name": "instanceReader", "privileges": ["instance"]},
            {"name": "identityAll", "privileges": ["identity"]}
        ],
        "identities": [
            {"name": "svc", "userName": "svc"},
            {"name": "agent", "exePath": "/usr/bin/agent"},
            {"name": "ops", "groupName": "ops"},
            {"name": "curl", "processName": "curl"}
        ],
        "roleAssignments": [
            {"role": "tokenReader", "identities": ["svc", "agent"]},
            {"role": "instanceReader", "identities": ["curl", "ops"]},
            {"role": "identityAll", "identities": ["ops"]}
        ]
    }
}"#;

fn caller(uid: u32, user: &str, groups: &[&str], exe: &str) -> KnownCaller {
    KnownCaller {
        uid,
        user_name: Some(user.to_owned()),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        exe_path: Some(exe.to_owned()),
    }
}

fn svc() -> KnownCaller {
    caller(1000, "svc", &[], "/usr/bin/python3")
}
fn agent() -> KnownCaller {
    caller(1001, "agent-user", &[], "/usr/bin/agent")
}
fn bob_in_ops() -> KnownCaller {
    caller(1002, "bob", &["users", "ops"], "/usr/bin/bash")
}
fn carol_curl() -> KnownCaller {
    caller(1003, "carol", &[], "/usr/bin/curl")
}
/// The attacker: no identity of hers is named anywhere. Her binary is called `agent`, but it
/// is not /usr/bin/agent.
fn eve() -> KnownCaller {
    caller(1004, "eve", &["users"], "/tmp/agent")
}

fn endpoint(kind: EndpointKind, mode: EndpointMode) -> GuardedEndpoint {
    GuardedEndpoint {
        kind,
        addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 80),
        mode,
    }
}

fn policy_with(imds: &str, mode: &str, default_access: &str) -> CompiledPolicy {
    let mut item = AuthorizationItem::from_json(imds).expect("json");
    item.mode = mode.into();
    item.default_access = default_access.into();
    CompiledPolicy::new(
        None,
        Some(CompiledRules::compile("imds", &item).expect("compiles")),
    )
}

fn run(
    policy: &CompiledPolicy,
    kind: EndpointKind,
    who: &mut KnownCaller,
    target: &str,
) -> Verdict {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut scratch = CanonicalRequest::new();
    authorize(
        policy,
        &endpoint(kind, EndpointMode::Enforce),
        who,
        path,
        query,
        &mut scratch,
    )
}

/// The basis as privilege / identity names, for readable tables.
fn named(policy: &CompiledPolicy, v: &Verdict) -> String {
    let rules = policy.rules(v.endpoint);
    let p = |i: u32| rules.map_or("?", |r| r.privileges()[i as usize].name());
    let id = |i: u32| rules.map_or("?", |r| r.identities()[i as usize].name());
    match v.basis {
        Basis::Granted {
            privilege,
            identity,
        } => format!("granted {} to {}", p(privilege), id(identity)),
        Basis::NoIdentity { privilege } => format!("no identity for {}", p(privilege)),
        Basis::AmbiguousQuery { privilege } => format!("ambiguous {}", p(privilege)),
        Basis::PartialSegment { privilege } => format!("partial {}", p(privilege)),
        Basis::InvalidRequest(e) => format!("invalid: {e}"),
        other => format!("{other:?}"),
    }
}

const PYTHON_TOKEN: &str =
    "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com";
const NODE_TOKEN: &str = "/metadata/identity/oauth2/token/?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com";

#[test]
fn imds_rule_table_with_bypass_attempts() {
    let policy = policy_with(IMDS_RULES, "enforce", "deny");
    type Case = (fn() -> KnownCaller, &'static str, &'static str);
    let cases: &[Case] = &[
        // Both client shapes of the managed-identity token request match alike (PLATFORM.md).
        (svc, PYTHON_TOKEN, "granted token to svc"),
        (svc, NODE_TOKEN, "granted token to svc"),
        (eve, PYTHON_TOKEN, "no identity for token"),
        (eve, NODE_TOKEN, "no identity for token"),
        // Another resource: the token privilege does not match, the broader one does.
        (
            svc,
            "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net",
            "no identity for identity",
        ),
        (svc, "/metadata/identity/oauth2/token?api-version=2018-02-01", "no identity for identity"),
        // Percent-encoded path and query: decoded once, matched alike.
        (
            eve,
            "/metadata/%69dentity/oauth2/%74oken?api-version=2018-02-01&%72esource=https%3a%2f%2fmanagement.azure.com",
            "no identity for token",
        ),
        (
            svc,
            "/metadata/%69dentity/oauth2/%74oken?%72esource=https%3a%2f%2fmanagement.azure.com",
            "granted token to svc",
        ),
        // Double encoding is decoded once only: `%2569` is the text `%69`, no privilege.
        (eve, "/metadata/%2569dentity/oauth2/token", "DefaultDeny"),
        // Case changes.
        (
            eve,
            "/METADATA/Identity/OAuth2/Token?API-VERSION=2018-02-01&RESOURCE=HTTPS://MANAGEMENT.AZURE.COM",
            "no identity for token",
        ),
        (
            svc,
            "/METADATA/Identity/OAuth2/Token?RESOURCE=HTTPS://MANAGEMENT.AZURE.COM",
            "granted token to svc",
        ),
        // Dot segments are resolved before matching.
        (
            eve,
            "/metadata/instance/../identity/oauth2/token?resource=https://management.azure.com",
            "no identity for token",
        ),
        (
            eve,
            "/metadata/./identity/oauth2/token/.?resource=https://management.azure.com",
            "no identity for token",
        ),
        (
            svc,
            "/metadata/x/%2E%2E/identity/oauth2/token?resource=https://management.azure.com",
            "granted token to svc",
        ),
        (eve, "/../metadata/identity", "invalid: .. climbs above the root"),
        // `//` and other non-canonical paths are refused.
        (eve, "//metadata/identity/oauth2/token", "invalid: empty path segment (//)"),
        (eve, "/metadata//identity/oauth2/token", "invalid: empty path segment (//)"),
        (eve, "/metadata/%2F/identity", "invalid: empty path segment (//)"),
        (eve, "/metadata/instance%00", "invalid: control character"),
        (eve, "/metadata/instance%0d%0a", "invalid: control character"),
        (eve, "/metadata\\identity", "invalid: backslash in the path"),
        (eve, "/metadata/%u0069dentity", "invalid: invalid percent escape"),
        (eve, "/metadata/identity/oauth2/token#x", "invalid: fragment marker # in the target"),
        // An encoded `?` splits off query pairs, as in GPA: still the token privilege.
        (
            eve,
            "/metadata/identity/oauth2/token%3Fresource=https://management.azure.com",
            "no identity for token",
        ),
        (
            svc,
            "/metadata/identity/oauth2/token%3Fapi-version=2018-02-01%26resource=https://management.azure.com",
            "granted token to svc",
        ),
        // Duplicate query keys: all equal is fine; conflicting values grant nothing.
        (
            svc,
            "/metadata/identity/oauth2/token?resource=https://management.azure.com&RESOURCE=https://MANAGEMENT.azure.com",
            "granted token to svc",
        ),
        (
            svc,
            "/metadata/identity/oauth2/token?resource=https://management.azure.com&resource=https://vault.azure.net",
            "ambiguous token",
        ),
        (
            svc,
            "/metadata/identity/oauth2/token?resource=https://vault.azure.net&resource=https://management.azure.com",
            "ambiguous token",
        ),
        (
            svc,
            "/metadata/identity/oauth2/token%3Fresource=https://vault.azure.net?resource=https://management.azure.com",
            "ambiguous token",
        ),
        // A group-only identity: bob is in ops, which the broad identity privilege allows.
        (bob_in_ops, PYTHON_TOKEN, "granted identity to ops"),
        (
            bob_in_ops,
            "/metadata/identity/oauth2/token?resource=https://management.azure.com&resource=https://vault.azure.net",
            "granted identity to ops",
        ),
        (bob_in_ops, "/metadata/instance/compute?api-version=2021-08-01", "granted instance to ops"),
        // An exe-path identity; eve's binary has the same file name in another directory.
        (agent, PYTHON_TOKEN, "granted token to agent"),
        (agent, "/metadata/instance", "no identity for instance"),
        // A process-name identity.
        (carol_curl, "/metadata/instance?api-version=2021-08-01&extended=true", "granted instance to curl"),
        (carol_curl, "/metadata/instance/", "granted instance to curl"),
        (eve, "/metadata/instance/compute", "no identity for instance"),
        // Segment-wise prefix: `/metadata/identityx` is not the identity privilege's path, and
        // it does not escape to defaultAccess either.
        (bob_in_ops, "/metadata/identityx", "partial identity"),
        (carol_curl, "/metadata/instancex", "partial instance"),
        (eve, "/metadata/identity", "no identity for identity"),
        // Nothing matched: defaultAccess.
        (eve, "/metadata/versions", "DefaultDeny"),
        (svc, "/", "DefaultDeny"),
    ];
    for (who, target, want) in cases {
        let v = run(&policy, EndpointKind::Imds, &mut who(), target);
        assert_eq!(
            named(&policy, &v),
            *want,
            "{target} by {:?}",
            who().user_name
        );
        let granted = want.starts_with("granted");
        assert_eq!(v.is_allowed(), granted, "{target}");
        assert_eq!(v.decision().is_allowed(), granted, "{target}");
        assert!(!v.is_audit());
    }
}

#[test]
fn default_access_allow_applies_only_when_nothing_matched() {
    let policy = policy_with(IMDS_RULES, "enforce", "allow");
    let cases = [
        ("/metadata/versions", true, "DefaultAllow"),
        (
            "/metadata/instance/compute",
            false,
            "no identity for instance",
        ),
        // A suffix inside the last segment never falls through to defaultAccess.
        ("/metadata/instancefoo", false, "partial instance"),
        (
            "/metadata/identity/oauth2/token.",
            false,
            "no identity for identity",
        ),
        (
            "/metadata/identity/oauth2/token?resource=https://management.azure.com&resource=x",
            false,
            "ambiguous token",
        ),
        (
            "/metadata//versions",
            false,
            "invalid: empty path segment (//)",
        ),
    ];
    for (target, allowed, want) in cases {
        let v = run(&policy, EndpointKind::Imds, &mut eve(), target);
        assert_eq!(
            (v.is_allowed(), named(&policy, &v).as_str()),
            (allowed, want),
            "{target}"
        );
    }
}

#[test]
fn modes_audit_enforce_disabled() {
    let request = "/metadata/instance/compute";
    // enforce: denied.
    let enforce = policy_with(IMDS_RULES, "Enforce", "deny");
    let v = run(&enforce, EndpointKind::Imds, &mut eve(), request);
    assert_eq!(v.decision(), Decision::Deny(DenyReason::NoIdentity));
    assert_eq!(v.decision().rule(), "rule: no matching identity");
    // audit: the same deny goes through, marked as audit for the access log.
    let audit = policy_with(IMDS_RULES, "AUDIT", "deny");
    let v = run(&audit, EndpointKind::Imds, &mut eve(), request);
    assert!(v.is_allowed() && v.is_audit());
    assert_eq!(v.decision(), Decision::Allow("audit: no matching identity"));
    assert!(v.decision().is_audit());
    assert!(v
        .explain(&audit)
        .to_string()
        .starts_with("allow (audit mode; enforce would deny) imds:"));
    let v = run(&audit, EndpointKind::Imds, &mut eve(), "/a//b");
    assert_eq!(
        v.decision(),
        Decision::Allow("audit: request not canonical")
    );
    // audit does not mark what was allowed anyway.
    let v = run(&audit, EndpointKind::Imds, &mut carol_curl(), request);
    assert!(v.is_allowed() && !v.is_audit());
    assert_eq!(v.decision(), Decision::Allow("rule: granted"));
    assert!(!v.decision().is_audit());
    // disabled (and unknown modes): the rules are not consulted at all.
    for mode in ["disabled", "off"] {
        let disabled = policy_with(IMDS_RULES, mode, "deny");
        let v = run(&disabled, EndpointKind::Imds, &mut eve(), request);
        assert_eq!(
            v.decision(),
            Decision::Allow("builtin: imds open"),
            "{mode}"
        );
    }
    // An endpoint that is not guarded allows everything, rules or not.
    let mut scratch = CanonicalRequest::new();
    let v = authorize(
        &enforce,
        &endpoint(EndpointKind::Imds, EndpointMode::Disabled),
        &mut eve(),
        request,
        None,
        &mut scratch,
    );
    assert_eq!(v.decision(), Decision::Allow("mode disabled"));
}

const WIRESERVER_RULES: &str = r#"{
    "defaultAccess": "deny", "mode": "audit", "id": "ws-1",
    "rules": {
        "privileges": [{"name": "machine", "path": "/machine"}, {"name": "vmSettings", "path": "/vmSettings"}],
        "roles": [{"name": "agent", "privileges": ["machine", "vmSettings"]}],
        "identities": [{"name": "waagent", "exePath": "/usr/sbin/waagent"}],
        "roleAssignments": [{"role": "agent", "identities": ["waagent"]}]
    }
}"#;

#[test]
fn wireserver_builtin_root_only_and_hostga_shares_its_rules() {
    let mut item = AuthorizationItem::from_json(WIRESERVER_RULES).expect("json");
    let root_python = || caller(0, "root", &["root"], "/usr/bin/python3");
    let root_waagent = || caller(0, "root", &["root"], "/usr/sbin/waagent");
    for mode in ["audit", "enforce"] {
        item.mode = mode.into();
        let policy = CompiledPolicy::new(
            Some(CompiledRules::compile("wireserver", &item).expect("ok")),
            None,
        );
        for kind in [EndpointKind::WireServer, EndpointKind::HostGaPlugin] {
            // Non-root: refused by the built-in rule in every mode, audit included.
            for ep_mode in [EndpointMode::Audit, EndpointMode::Enforce] {
                let mut scratch = CanonicalRequest::new();
                let v = authorize(
                    &policy,
                    &endpoint(kind, ep_mode),
                    &mut svc(),
                    "/machine",
                    Some("comp=goalstate"),
                    &mut scratch,
                );
                assert_eq!(
                    v.decision(),
                    Decision::Deny(DenyReason::RootOnly),
                    "{kind} {mode}"
                );
                assert!(!v.is_audit());
            }
            let (path, privilege) = if kind == EndpointKind::WireServer {
                ("/machine/", "machine")
            } else {
                ("/vmSettings", "vmSettings")
            };
            let v = run(&policy, kind, &mut root_waagent(), path);
            assert_eq!(
                named(&policy, &v),
                format!("granted {privilege} to waagent")
            );
            let v = run(&policy, kind, &mut root_python(), path);
            assert_eq!(v.is_allowed(), mode == "audit", "{kind} {mode}");
            assert_eq!(v.is_audit(), mode == "audit");
            assert_eq!(v.basis.deny_reason(), Some(DenyReason::NoIdentity));
            let v = run(&policy, kind, &mut root_python(), "/health");
            assert_eq!(v.basis, Basis::DefaultDeny);
        }
    }
    // Without advanced rules, the built-in ones alone decide (the existing `evaluate`).
    let none = CompiledPolicy::builtin_only();
    let v = run(
        &none,
        EndpointKind::WireServer,
        &mut root_python(),
        "/machine?comp=goalstate",
    );
    assert_eq!(v.decision(), Decision::Allow("builtin: root"));
    let v = run(&none, EndpointKind::Imds, &mut eve(), "/whatever//x");
    assert_eq!(v.decision(), Decision::Allow("builtin: imds open"));
}

#[test]
fn explanation_names_privilege_and_identity() {
    let policy = policy_with(IMDS_RULES, "enforce", "deny");
    let v = run(&policy, EndpointKind::Imds, &mut svc(), NODE_TOKEN);
    assert_eq!(
        v.explain(&policy).to_string(),
        "allow imds: privilege \"token\" (/metadata/identity/oauth2/token) is granted to identity \"svc\", which matches the caller"
    );
    let v = run(
        &policy,
        EndpointKind::Imds,
        &mut eve(),
        "/metadata/instance",
    );
    assert_eq!(
        v.explain(&policy).to_string(),
        "deny imds: privilege \"instance\" (/metadata/instance/) matched; no identity assigned to it matches the caller"
    );
    let v = run(&policy, EndpointKind::Imds, &mut eve(), "/x");
    assert_eq!(
        v.explain(&policy).to_string(),
        "deny imds: no privilege matched; defaultAccess is deny"
    );
}

/// Caller facts that record what was asked, to prove evaluation is lazy.
#[derive(Debug, Default)]
struct Probe {
    uid: u32,
    asked: Vec<&'static str>,
}

impl CallerFacts for Probe {
    fn uid(&self) -> u32 {
        self.uid
    }
    fn user_name(&mut self) -> Option<&str> {
        self.asked.push("user");
        None
    }
    fn in_group(&mut self, _group: &str) -> bool {
        self.asked.push("group");
        false
    }
    fn exe_path(&mut self) -> Option<&str> {
        self.asked.push("exe");
        None
    }
}

#[test]
fn caller_facts_are_asked_only_when_a_rule_needs_them_and_missing_facts_never_match() {
    let policy = policy_with(IMDS_RULES, "enforce", "allow");
    let mut scratch = CanonicalRequest::new();
    let ep = endpoint(EndpointKind::Imds, EndpointMode::Enforce);
    let mut probe = Probe::default();
    let v = authorize(
        &policy,
        &ep,
        &mut probe,
        "/metadata/versions",
        None,
        &mut scratch,
    );
    assert!(v.is_allowed());
    assert!(
        probe.asked.is_empty(),
        "no privilege matched: {:?}",
        probe.asked
    );

    let mut probe = Probe::default();
    let v = authorize(
        &policy,
        &ep,
        &mut probe,
        "/metadata/instance",
        None,
        &mut scratch,
    );
    // instance: curl (process name, from the exe path) then ops (group). A process that is gone
    // (no exe path) matches no exe or process identity.
    assert_eq!(v.basis.deny_reason(), Some(DenyReason::NoIdentity));
    assert_eq!(probe.asked, ["exe", "group"]);

    // The bare kernel record (uid only) never matches an identity, so it fails closed.
    let mut record =
        crate::identity::CallerRecord::for_uid(1000, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 80));
    let v = authorize(
        &policy,
        &ep,
        &mut record,
        "/metadata/instance",
        None,
        &mut scratch,
    );
    assert!(!v.is_allowed());
}

#[test]
fn identities_match_exactly_and_need_every_field() {
    let rules = r#"{"defaultAccess": "deny", "mode": "enforce", "id": "x", "rules": {
        "privileges": [{"name": "p", "path": "/p"}],
        "roles": [{"name": "r", "privileges": ["p"]}],
        "identities": [{"name": "both", "userName": "svc", "groupName": "ops"},
                       {"name": "empty-field", "userName": "", "exePath": "/usr/bin/x"}],
        "roleAssignments": [{"role": "r", "identities": ["both", "empty-field"]}]}}"#;
    let policy = policy_with(rules, "enforce", "deny");
    let cases = [
        (caller(1, "svc", &["ops"], "/x"), true),
        (caller(1, "svc", &[], "/x"), false),
        (caller(1, "bob", &["ops"], "/x"), false),
        // Linux names are case-sensitive (GPA compared them case-insensitively).
        (caller(1, "SVC", &["ops"], "/x"), false),
        (caller(1, "svc", &["OPS"], "/x"), false),
        // A field set to an empty value never matches, even a caller with no user name.
        (
            KnownCaller {
                uid: 1,
                exe_path: Some("/usr/bin/x".into()),
                ..KnownCaller::default()
            },
            false,
        ),
    ];
    for (mut who, allowed) in cases {
        let v = run(&policy, EndpointKind::Imds, &mut who, "/p/q");
        assert_eq!(v.is_allowed(), allowed, "{who:?}");
    }
}

#[test]
fn local_rule_file_end_to_end() {
    let id = base64::engine::general_purpose::STANDARD
        .encode(r#"{"id":"imds-sig","useLocalFileRules":true}"#);
    let mut remote = AuthorizationItem::from_json(IMDS_RULES).expect("json");
    remote.id = id;
    let local = r#"{"defaultAccess": "allow", "id": "ops-local", "rules": {
        "privileges": [{"name": "token", "path": "/metadata/identity/oauth2/token"}],
        "roles": [{"name": "tokenReader", "privileges": ["token"]}],
        "identities": [{"name": "svc", "userName": "eve"}],
        "roleAssignments": [{"role": "tokenReader", "identities": ["svc"]}]}}"#;
    let (item, outcome) = apply_local_rules(
        remote.clone(),
        LocalFile::Contents(local),
        local_rules_file_name(EndpointKind::Imds),
    );
    assert!(
        matches!(outcome, LocalOutcome::Merged { .. }),
        "{outcome:?}"
    );
    // Same names as the remote rules, but no collision: the local ones are prefixed.
    let rules = CompiledRules::compile("imds", &item).expect("merged rules compile");
    let policy = CompiledPolicy::new(None, Some(rules));
    let v = run(&policy, EndpointKind::Imds, &mut eve(), PYTHON_TOKEN);
    assert_eq!(
        named(&policy, &v),
        "granted LocalFileRules_token to LocalFileRules_svc"
    );
    let v = run(&policy, EndpointKind::Imds, &mut svc(), PYTHON_TOKEN);
    assert_eq!(named(&policy, &v), "granted token to svc");
    // The local defaultAccess overrides the remote deny.
    let v = run(
        &policy,
        EndpointKind::Imds,
        &mut eve(),
        "/metadata/versions",
    );
    assert_eq!(v.basis, Basis::DefaultAllow);

    // An invalid local file: everything is denied (the remote mode, enforce, stays).
    for bad in [
        LocalFile::Contents("{\"rules\": "),
        LocalFile::Unreadable("EACCES"),
    ] {
        let (item, outcome) = apply_local_rules(remote.clone(), bad, "IMDS_Rules.json");
        assert!(
            matches!(outcome, LocalOutcome::FailedClosed(_)),
            "{outcome:?}"
        );
        let policy = CompiledPolicy::new(
            None,
            Some(CompiledRules::compile("imds", &item).expect("ok")),
        );
        for (mut who, target) in [(svc(), PYTHON_TOKEN), (carol_curl(), "/metadata/instance")] {
            let v = run(&policy, EndpointKind::Imds, &mut who, target);
            assert_eq!(
                v.decision(),
                Decision::Deny(DenyReason::DefaultDeny),
                "{target}"
            );
        }
    }
}

#[test]
fn bad_rule_documents_are_refused_as_a_whole() {
    let texts = [
        // Malformed and partial JSON.
        r#"{"imds": {"defaultAccess": "deny", "mode": "enforce""#.to_owned(),
        r#"{"imds": {"defaultAccess": "deny", "mode": "enforce", "id": "x", "rules": {"privileges": [{"name": "p"}]}}}"#.to_owned(),
        // A rule that references an unknown role, or an unknown identity.
        r#"{"imds": {"defaultAccess": "deny", "mode": "enforce", "id": "x", "rules": {"roleAssignments": [{"role": "r", "identities": ["i"]}]}}}"#.to_owned(),
        IMDS_RULES.replace(r#""identities": ["ops"]"#, r#""identities": ["ops", "mallory"]"#),
    ];
    for (n, text) in texts.iter().enumerate() {
        let text = if n == 3 {
            format!(r#"{{"imds": {text}}}"#)
        } else {
            text.clone()
        };
        let compiled =
            AuthorizationRules::from_json(&text).and_then(|r| CompiledPolicy::compile(&r));
        assert!(compiled.is_err(), "case {n} must be refused");
    }
    let deny = CompiledPolicy::new(None, Some(CompiledRules::deny_all("fail-closed")));
    let v = run(&deny, EndpointKind::Imds, &mut svc(), PYTHON_TOKEN);
    assert_eq!(v.decision(), Decision::Deny(DenyReason::DefaultDeny));
}
