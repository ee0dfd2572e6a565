//! Evaluation: a pure function of the compiled rules, the caller and the canonical request.
//!
//! SPEC-GPA.md section 5: a privilege that matches the request and has an assigned identity
//! that matches the caller allows; a privilege that matched with no such identity denies;
//! nothing matched → `defaultAccess`. Then the mode: `disabled` allows, `audit` turns a deny
//! into an allow marked as audited, `enforce` denies.
//!
//! Two places are stricter than the Guest Proxy Agent, each so that a request can never slip
//! past a privilege into a permissive `defaultAccess`:
//! - A path that extends a privilege's path inside a segment (`/metadata/identityx` for
//!   `/metadata/identity`) is never granted by it (paths match by whole segments), but it still
//!   counts as matched, so it is denied rather than falling to `defaultAccess` (GPA's raw string
//!   prefix matched it; a server that trims `token.` to `token` would otherwise be reachable).
//! - A required query key given several times with different values (`resource=a&resource=b`)
//!   is ambiguous: the upstream picks one, the proxy cannot know which. Such a privilege grants
//!   nothing and counts as matched (deny). GPA looked at the first value only. A key whose
//!   values all differ from the required one does not match, as in GPA.
//!
//! Caller facts (user name, groups, exe path) are asked for only when a matched privilege has
//! an identity that needs them, through [`CallerFacts`], so a request that no rule concerns
//! never costs a /proc read. Evaluation allocates nothing.

use std::fmt;

use super::canonical::{CanonicalError, CanonicalRequest, QueryMatch};
use super::compile::{CompiledPolicy, CompiledRules, IdentityMatcher, PrivilegeMatcher};
use super::{Decision, DenyReason};
use crate::identity::CallerRecord;
use crate::upstream::{EndpointKind, EndpointMode, GuardedEndpoint};

/// What identity rules may ask about a caller. Implementations fetch lazily and cache; a fact
/// the caller cannot provide (process gone, no NSS entry) is `None` / `false` and never
/// matches.
pub trait CallerFacts {
    /// Real uid of the calling task (from the kernel record).
    fn uid(&self) -> u32;
    /// The user name of the uid (NSS).
    fn user_name(&mut self) -> Option<&str>;
    /// Whether the user is in the group of this name (NSS, primary and supplementary groups).
    fn in_group(&mut self, group: &str) -> bool;
    /// Full path of the executable (`/proc/PID/exe`).
    fn exe_path(&mut self) -> Option<&str>;
    /// File name of the executable.
    fn process_name(&mut self) -> Option<&str> {
        self.exe_path()
            .map(|path| path.rsplit_once('/').map_or(path, |(_, name)| name))
    }
}

/// The bare kernel record knows the uid and nothing else: identity fields never match it.
impl CallerFacts for CallerRecord {
    fn uid(&self) -> u32 {
        self.uid
    }
    fn user_name(&mut self) -> Option<&str> {
        None
    }
    fn in_group(&mut self, _group: &str) -> bool {
        false
    }
    fn exe_path(&mut self) -> Option<&str> {
        None
    }
}

/// Caller facts known up front: for tests, benches and `rules explain`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownCaller {
    pub uid: u32,
    pub user_name: Option<String>,
    pub groups: Vec<String>,
    pub exe_path: Option<String>,
}

impl CallerFacts for KnownCaller {
    fn uid(&self) -> u32 {
        self.uid
    }
    fn user_name(&mut self) -> Option<&str> {
        self.user_name.as_deref()
    }
    fn in_group(&mut self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
    fn exe_path(&mut self) -> Option<&str> {
        self.exe_path.as_deref()
    }
}

/// Why a request was allowed or denied, before the mode is applied. Privilege and identity
/// numbers index [`CompiledRules::privileges`] and [`CompiledRules::identities`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// The endpoint is not guarded.
    EndpointDisabled,
    /// The built-in rules allow and no advanced rules are in force (the rule's name).
    Builtin(&'static str),
    /// WireServer / HostGAPlugin and the caller is not root (every mode).
    RootOnly,
    /// A privilege matched and one of its identities matched the caller.
    Granted { privilege: u32, identity: u32 },
    /// No privilege matched; `defaultAccess` is allow.
    DefaultAllow,
    /// A privilege matched; none of its identities matched the caller.
    NoIdentity { privilege: u32 },
    /// A privilege matched but a required query key has conflicting values.
    AmbiguousQuery { privilege: u32 },
    /// The path extends a privilege's path inside a segment.
    PartialSegment { privilege: u32 },
    /// No privilege matched; `defaultAccess` is deny.
    DefaultDeny,
    /// The request has no canonical form.
    InvalidRequest(CanonicalError),
}

impl Basis {
    /// The deny reason, or `None` when this basis allows.
    pub fn deny_reason(self) -> Option<DenyReason> {
        match self {
            Basis::EndpointDisabled
            | Basis::Builtin(_)
            | Basis::Granted { .. }
            | Basis::DefaultAllow => None,
            Basis::RootOnly => Some(DenyReason::RootOnly),
            Basis::NoIdentity { .. } => Some(DenyReason::NoIdentity),
            Basis::AmbiguousQuery { .. } => Some(DenyReason::AmbiguousQuery),
            Basis::PartialSegment { .. } => Some(DenyReason::PartialSegment),
            Basis::DefaultDeny => Some(DenyReason::DefaultDeny),
            Basis::InvalidRequest(_) => Some(DenyReason::InvalidRequest),
        }
    }

    fn allow_rule(self) -> &'static str {
        match self {
            Basis::EndpointDisabled => "mode disabled",
            Basis::Builtin(rule) => rule,
            Basis::Granted { .. } => "rule: granted",
            Basis::DefaultAllow => "rule: default allow",
            _ => "-",
        }
    }

    /// The matched privilege, if this basis names one.
    pub fn privilege(self) -> Option<u32> {
        match self {
            Basis::Granted { privilege, .. }
            | Basis::NoIdentity { privilege }
            | Basis::AmbiguousQuery { privilege }
            | Basis::PartialSegment { privilege } => Some(privilege),
            _ => None,
        }
    }
}

/// The outcome of authorization with everything the access log and `rules explain` need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub endpoint: EndpointKind,
    pub basis: Basis,
    /// A deny that audit mode let through.
    pub audited: bool,
}

impl Verdict {
    fn new(endpoint: EndpointKind, basis: Basis) -> Self {
        Verdict {
            endpoint,
            basis,
            audited: false,
        }
    }

    pub fn is_allowed(&self) -> bool {
        self.audited || self.basis.deny_reason().is_none()
    }

    /// Allowed only because the rules are in audit mode: log it as a would-be deny.
    pub fn is_audit(&self) -> bool {
        self.audited
    }

    /// The compact form the proxy acts on and logs. Audited denies are `Allow("audit: ...")`.
    pub fn decision(&self) -> Decision {
        match self.basis.deny_reason() {
            None => Decision::Allow(self.basis.allow_rule()),
            Some(reason) if self.audited => Decision::Allow(reason.audit_str()),
            Some(reason) => Decision::Deny(reason),
        }
    }

    /// A sentence naming the privilege and identity that decided (for logs and `explain`).
    pub fn explain<'p>(&self, policy: &'p CompiledPolicy) -> Explanation<'p> {
        Explanation {
            verdict: *self,
            rules: policy.rules(self.endpoint),
        }
    }
}

/// Display of a [`Verdict`] with the names from its policy.
#[derive(Debug, Clone, Copy)]
pub struct Explanation<'p> {
    verdict: Verdict,
    rules: Option<&'p CompiledRules>,
}

impl fmt::Display for Explanation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.verdict;
        let privilege = |i: u32| {
            self.rules
                .and_then(|r| r.privileges.get(i as usize))
                .map_or(("?", "?"), |p| (p.name(), p.rule_path()))
        };
        let identity = |i: u32| {
            self.rules
                .and_then(|r| r.identities.get(i as usize))
                .map_or("?", IdentityMatcher::name)
        };
        let verb = match (v.is_allowed(), v.audited) {
            (true, false) => "allow",
            (true, true) => "allow (audit mode; enforce would deny)",
            (false, _) => "deny",
        };
        write!(f, "{verb} {}: ", v.endpoint)?;
        match v.basis {
            Basis::EndpointDisabled => write!(f, "the endpoint is not guarded"),
            Basis::Builtin(rule) => write!(f, "{rule}; no advanced rules in force"),
            Basis::RootOnly => write!(f, "built-in rule: root only, and the caller is not root"),
            Basis::Granted {
                privilege: p,
                identity: i,
            } => {
                let (name, path) = privilege(p);
                write!(
                    f,
                    "privilege {name:?} ({path}) is granted to identity {:?}, which matches the caller",
                    identity(i)
                )
            }
            Basis::DefaultAllow => write!(f, "no privilege matched; defaultAccess is allow"),
            Basis::NoIdentity { privilege: p } => {
                let (name, path) = privilege(p);
                write!(
                    f,
                    "privilege {name:?} ({path}) matched; no identity assigned to it matches the caller"
                )
            }
            Basis::AmbiguousQuery { privilege: p } => {
                let (name, path) = privilege(p);
                write!(
                    f,
                    "privilege {name:?} ({path}) matched, but a required query key has conflicting values"
                )
            }
            Basis::PartialSegment { privilege: p } => {
                let (name, path) = privilege(p);
                write!(
                    f,
                    "the path extends privilege {name:?} ({path}) inside a segment; only whole segments are granted"
                )
            }
            Basis::DefaultDeny => write!(f, "no privilege matched; defaultAccess is deny"),
            Basis::InvalidRequest(e) => write!(f, "the request has no canonical form: {e}"),
        }
    }
}

/// How one privilege relates to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hit {
    Miss,
    /// Matches; its identities may allow.
    Grantable,
    /// Counts as matched but can grant nothing: the path goes on inside the privilege's last
    /// segment (`partial_segment`), or a required query key is ambiguous.
    DenyOnly {
        partial_segment: bool,
    },
}

impl PrivilegeMatcher {
    fn hit(&self, request: &CanonicalRequest) -> Hit {
        let path = request.path_bytes();
        let prefix = &self.path[..];
        if !path.starts_with(prefix) {
            return Hit::Miss;
        }
        let whole_segments = path.len() == prefix.len() || path[prefix.len()] == b'/';
        let mut ambiguous = false;
        for required in self.query.iter() {
            match request.query_match(&required.key, &required.value) {
                QueryMatch::Equal => {}
                QueryMatch::Ambiguous => ambiguous = true,
                QueryMatch::Absent => return Hit::Miss,
            }
        }
        if !whole_segments || ambiguous {
            Hit::DenyOnly {
                partial_segment: !whole_segments,
            }
        } else {
            Hit::Grantable
        }
    }
}

impl IdentityMatcher {
    /// Every field set must match exactly (case-sensitive: Linux names and paths are).
    fn matches<C: CallerFacts + ?Sized>(&self, caller: &mut C) -> bool {
        if self.never {
            return false;
        }
        if let Some(user) = &self.user_name {
            if caller.user_name() != Some(&**user) {
                return false;
            }
        }
        if let Some(group) = &self.group_name {
            if !caller.in_group(group) {
                return false;
            }
        }
        if let Some(exe) = &self.exe_path {
            if caller.exe_path() != Some(&**exe) {
                return false;
            }
        }
        if let Some(name) = &self.process_name {
            if caller.process_name() != Some(&**name) {
                return false;
            }
        }
        true
    }
}

impl CompiledRules {
    /// The rules' answer for a canonical request, before the mode is applied.
    pub fn judge<C: CallerFacts + ?Sized>(
        &self,
        caller: &mut C,
        request: &CanonicalRequest,
    ) -> Basis {
        let mut matched: Option<Basis> = None;
        for (p, privilege) in self.privileges.iter().enumerate() {
            let p = p as u32;
            match privilege.hit(request) {
                Hit::Miss => {}
                Hit::DenyOnly { partial_segment } => {
                    matched.get_or_insert(if partial_segment {
                        Basis::PartialSegment { privilege: p }
                    } else {
                        Basis::AmbiguousQuery { privilege: p }
                    });
                }
                Hit::Grantable => {
                    for &i in privilege.grants.iter() {
                        if self.identities[i as usize].matches(caller) {
                            return Basis::Granted {
                                privilege: p,
                                identity: i,
                            };
                        }
                    }
                    matched.get_or_insert(Basis::NoIdentity { privilege: p });
                }
            }
        }
        matched.unwrap_or(if self.default_allow {
            Basis::DefaultAllow
        } else {
            Basis::DefaultDeny
        })
    }

    fn conclude(&self, endpoint: EndpointKind, basis: Basis) -> Verdict {
        let denied = basis.deny_reason().is_some();
        match self.mode {
            EndpointMode::Disabled => Verdict::new(endpoint, Basis::Builtin("rules: disabled")),
            EndpointMode::Audit => Verdict {
                endpoint,
                basis,
                audited: denied,
            },
            EndpointMode::Enforce => Verdict::new(endpoint, basis),
        }
    }
}

impl CompiledPolicy {
    /// The advanced rules' verdict for `endpoint` (HostGAPlugin: WireServer's rules and mode),
    /// mode applied. Built-in rules are not applied here; see [`authorize`].
    pub fn evaluate<C: CallerFacts + ?Sized>(
        &self,
        endpoint: EndpointKind,
        caller: &mut C,
        request: &CanonicalRequest,
    ) -> Verdict {
        match self.active_rules(endpoint) {
            None => Verdict::new(endpoint, Basis::Builtin(builtin_allow(endpoint))),
            Some(rules) => rules.conclude(endpoint, rules.judge(caller, request)),
        }
    }
}

fn builtin_allow(kind: EndpointKind) -> &'static str {
    match kind {
        EndpointKind::WireServer | EndpointKind::HostGaPlugin => "builtin: root",
        EndpointKind::Imds => "builtin: imds open",
    }
}

/// The built-in rules alone (SPEC-GPA.md section 5): `None` when they let the request go on to
/// the advanced rules.
pub(crate) fn builtin(uid: u32, endpoint: &GuardedEndpoint) -> Option<Basis> {
    if endpoint.mode == EndpointMode::Disabled {
        return Some(Basis::EndpointDisabled);
    }
    if endpoint.root_only() && uid != 0 {
        return Some(Basis::RootOnly);
    }
    None
}

/// Authorize one request: built-in rules first (WireServer and HostGAPlugin refuse non-root
/// callers in every mode), then the endpoint's advanced rules in their mode. `raw_path` and
/// `raw_query` are the request's, as received ([`crate::http::RequestHead::path`] and
/// `query`); they are put in canonical form in `scratch` (reused per connection) only when
/// rules are in force. A request without canonical form is denied by the rules (or let through
/// and marked in audit mode).
pub fn authorize<C: CallerFacts + ?Sized>(
    policy: &CompiledPolicy,
    endpoint: &GuardedEndpoint,
    caller: &mut C,
    raw_path: &str,
    raw_query: Option<&str>,
    scratch: &mut CanonicalRequest,
) -> Verdict {
    let kind = endpoint.kind;
    if let Some(basis) = builtin(caller.uid(), endpoint) {
        return Verdict::new(kind, basis);
    }
    let Some(rules) = policy.active_rules(kind) else {
        return Verdict::new(kind, Basis::Builtin(builtin_allow(kind)));
    };
    let basis = match scratch.canonicalize(raw_path, raw_query) {
        Ok(()) => rules.judge(caller, scratch),
        Err(e) => Basis::InvalidRequest(e),
    };
    rules.conclude(kind, basis)
}
