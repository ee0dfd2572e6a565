//! The Guest Proxy Agent's rule documents, as delivered (SPEC-GPA.md section 5): the v2.0
//! secure-channel `authorizationRules`, one `AuthorizationItem` per endpoint, and the local rule
//! files `WireServer_Rules.json` / `IMDS_Rules.json` with their merge rule.
//!
//! The types mirror the JSON exactly (camelCase, the same optional fields, unknown fields
//! ignored as GPA ignores them) and keep strings as sent; meaning is given in `compile`. The
//! local-file merge takes the file's contents, not its path, so it stays pure and testable;
//! the caller reads the file. Trade-off: a local file that is present but unreadable or invalid
//! turns the endpoint's rules into "deny everything" (GPA's fail-closed rule) instead of
//! falling back to the remote rules, which may be more permissive than the operator intended.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::compile::{validate_rules, PolicyError};
use crate::upstream::{EndpointKind, EndpointMode};

/// The v2.0 status's `authorizationRules`: one item per endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationRules {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imds: Option<AuthorizationItem>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireserver: Option<AuthorizationItem>,
    /// Parsed for completeness; HostGAPlugin is judged by the WireServer item (SPEC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostga: Option<AuthorizationItem>,
}

/// The rules of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationItem {
    /// `allow` or `deny`, any case.
    pub default_access: String,
    /// `disabled`, `audit` or `enforce`, any case; anything else means disabled.
    pub mode: String,
    /// An opaque id, or base64 of `{"id": .., "useLocalFileRules": bool}`.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<AccessControlRules>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessControlRules {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privileges: Option<Vec<Privilege>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<Role>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identities: Option<Vec<Identity>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_assignments: Option<Vec<RoleAssignment>>,
}

/// A path prefix (and required query values) that a role may be given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Privilege {
    pub name: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_parameters: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Role {
    pub name: String,
    pub privileges: Vec<String>,
}

/// A set of callers: every field it sets must match.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleAssignment {
    pub role: String,
    pub identities: Vec<String>,
}

/// A local rule file: no mode (the remote item's mode applies).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalRulesFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_access: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<AccessControlRules>,
}

/// What a request that no privilege matched gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultAccess {
    Allow,
    Deny,
}

impl DefaultAccess {
    /// `allow` / `deny`, any case, surrounding blanks ignored; anything else is `None`.
    pub fn parse(text: &str) -> Option<DefaultAccess> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("allow") {
            Some(DefaultAccess::Allow)
        } else if text.eq_ignore_ascii_case("deny") {
            Some(DefaultAccess::Deny)
        } else {
            None
        }
    }
}

/// A mode as the Guest Proxy Agent reads it: any case; anything unknown is `disabled`.
pub fn parse_mode(text: &str) -> EndpointMode {
    let text = text.trim();
    if text.eq_ignore_ascii_case("enforce") {
        EndpointMode::Enforce
    } else if text.eq_ignore_ascii_case("audit") {
        EndpointMode::Audit
    } else {
        EndpointMode::Disabled
    }
}

fn json_error(scope: &str, e: serde_json::Error) -> PolicyError {
    PolicyError::new(scope, "json", e.to_string())
}

impl AuthorizationRules {
    pub fn from_json(text: &str) -> Result<Self, PolicyError> {
        serde_json::from_str(text).map_err(|e| json_error("authorizationRules", e))
    }

    /// From the value the key keeper keeps (`SecureChannelStatus::authorization_rules`).
    pub fn from_value(value: serde_json::Value) -> Result<Self, PolicyError> {
        serde_json::from_value(value).map_err(|e| json_error("authorizationRules", e))
    }

    /// The item whose rules judge `kind`: HostGAPlugin uses WireServer's.
    pub fn item(&self, kind: EndpointKind) -> Option<&AuthorizationItem> {
        match kind {
            EndpointKind::WireServer | EndpointKind::HostGaPlugin => self.wireserver.as_ref(),
            EndpointKind::Imds => self.imds.as_ref(),
        }
    }
}

impl AuthorizationItem {
    pub fn from_json(text: &str) -> Result<Self, PolicyError> {
        serde_json::from_str(text).map_err(|e| json_error("authorizationItem", e))
    }

    pub fn mode(&self) -> EndpointMode {
        parse_mode(&self.mode)
    }
}

/// What an item's `id` says: a plain id, or base64 of JSON `{"id", "useLocalFileRules"}`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuleId {
    pub logical_id: String,
    pub use_local_file_rules: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EncodedRuleId {
    #[serde(default)]
    id: String,
    #[serde(default)]
    use_local_file_rules: bool,
}

impl RuleId {
    /// Anything that is not base64 of such JSON is a plain id without local rules.
    pub fn parse(raw: &str) -> RuleId {
        let raw = raw.trim();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(raw)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<EncodedRuleId>(&bytes).ok());
        match decoded {
            Some(encoded) => RuleId {
                logical_id: encoded.id,
                use_local_file_rules: encoded.use_local_file_rules,
            },
            None => RuleId {
                logical_id: raw.to_owned(),
                use_local_file_rules: false,
            },
        }
    }
}

/// Where GPA keeps the local rule files.
pub const LOCAL_RULES_DIR: &str = "/var/lib/azure-proxy-agent/rules";
/// Prefix given to every name (and reference) from a local rule file, so that local and remote
/// names never collide.
pub const LOCAL_NAME_PREFIX: &str = "LocalFileRules_";

/// The local rule file of an endpoint (HostGAPlugin shares WireServer's).
pub fn local_rules_file_name(kind: EndpointKind) -> &'static str {
    match kind {
        EndpointKind::WireServer | EndpointKind::HostGaPlugin => "WireServer_Rules.json",
        EndpointKind::Imds => "IMDS_Rules.json",
    }
}

/// The local rule file as the caller found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalFile<'a> {
    /// No such file: the remote rules apply unchanged (a new VM whose rules have not arrived).
    Missing,
    /// The file exists but could not be read (the reason, for the error).
    Unreadable(&'a str),
    /// The file's contents.
    Contents(&'a str),
}

/// What became of the local rule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalOutcome {
    /// The remote item's id does not ask for local rules; the file was not consulted.
    NotRequested,
    /// Asked for, but there is no file.
    Missing,
    /// Merged; the local file's own id, if it had one.
    Merged { local_id: Option<String> },
    /// Unreadable or invalid: the item now denies everything (its mode unchanged).
    FailedClosed(PolicyError),
}

impl LocalRulesFile {
    /// Parse and validate a local rule file (`scope` names it in errors): GPA's checks, and
    /// fastproxy's own, on names, references and paths.
    pub fn from_json(scope: &str, text: &str) -> Result<Self, PolicyError> {
        let file: LocalRulesFile = serde_json::from_str(text).map_err(|e| json_error(scope, e))?;
        if let Some(access) = &file.default_access {
            if DefaultAccess::parse(access).is_none() {
                return Err(PolicyError::new(
                    scope,
                    "defaultAccess",
                    format!("{access:?} is neither allow nor deny"),
                ));
            }
        }
        if file.id.as_deref().is_some_and(|id| id.trim().is_empty()) {
            return Err(PolicyError::new(scope, "id", "empty"));
        }
        if let Some(rules) = &file.rules {
            validate_rules(scope, rules)?;
        }
        Ok(file)
    }
}

/// The item that judges an endpoint once its local rule file is taken into account
/// (SPEC-GPA.md section 5). `local` is only looked at when the remote id asks for it.
pub fn apply_local_rules(
    remote: AuthorizationItem,
    local: LocalFile<'_>,
    file_name: &str,
) -> (AuthorizationItem, LocalOutcome) {
    if !RuleId::parse(&remote.id).use_local_file_rules {
        return (remote, LocalOutcome::NotRequested);
    }
    let parsed = match local {
        LocalFile::Missing => return (remote, LocalOutcome::Missing),
        LocalFile::Unreadable(reason) => Err(PolicyError::new(
            file_name,
            "file",
            format!("unreadable: {reason}"),
        )),
        LocalFile::Contents(text) => LocalRulesFile::from_json(file_name, text),
    };
    match parsed {
        Ok(file) => {
            let local_id = file.id.clone();
            (merge(remote, file), LocalOutcome::Merged { local_id })
        }
        Err(e) => (fail_closed(remote), LocalOutcome::FailedClosed(e)),
    }
}

/// GPA's fail-closed item: the remote mode, no rules, default deny.
fn fail_closed(remote: AuthorizationItem) -> AuthorizationItem {
    AuthorizationItem {
        default_access: "deny".to_owned(),
        rules: None,
        ..remote
    }
}

fn merge(mut remote: AuthorizationItem, local: LocalRulesFile) -> AuthorizationItem {
    if let Some(access) = local.default_access {
        remote.default_access = access;
    }
    let Some(local_rules) = local.rules else {
        return remote;
    };
    let local_rules = prefixed(local_rules);
    let remote_rules = remote.rules.take().unwrap_or_default();
    remote.rules = Some(AccessControlRules {
        privileges: concat(remote_rules.privileges, local_rules.privileges),
        roles: concat(remote_rules.roles, local_rules.roles),
        identities: concat(remote_rules.identities, local_rules.identities),
        role_assignments: concat(remote_rules.role_assignments, local_rules.role_assignments),
    });
    remote
}

fn concat<T>(a: Option<Vec<T>>, b: Option<Vec<T>>) -> Option<Vec<T>> {
    match (a, b) {
        (None, None) => None,
        (Some(v), None) | (None, Some(v)) => Some(v),
        (Some(mut a), Some(b)) => {
            a.extend(b);
            Some(a)
        }
    }
}

fn prefix(name: &mut String) {
    name.insert_str(0, LOCAL_NAME_PREFIX);
}

/// Every name and every reference of a local file gets [`LOCAL_NAME_PREFIX`]. (GPA prefixes
/// only when remote rules exist too; prefixing always keeps a name's origin visible in logs
/// and changes no decision.)
fn prefixed(mut rules: AccessControlRules) -> AccessControlRules {
    for p in rules.privileges.iter_mut().flatten() {
        prefix(&mut p.name);
    }
    for r in rules.roles.iter_mut().flatten() {
        prefix(&mut r.name);
        r.privileges.iter_mut().for_each(prefix);
    }
    for i in rules.identities.iter_mut().flatten() {
        prefix(&mut i.name);
    }
    for a in rules.role_assignments.iter_mut().flatten() {
        prefix(&mut a.role);
        a.identities.iter_mut().for_each(prefix);
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded_id(json: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(json)
    }

    const FULL_ITEM: &str = r#"{
        "defaultAccess": "Deny", "mode": "Enforce", "id": "abc", "someFutureField": 1,
        "rules": {
            "privileges": [{"name": "token", "path": "/metadata/identity/oauth2/token",
                            "queryParameters": {"resource": "https://management.azure.com"}}],
            "roles": [{"name": "reader", "privileges": ["token"]}],
            "identities": [{"name": "svc", "userName": "svc", "groupName": "g",
                            "exePath": "/usr/bin/svc", "processName": "svc"}],
            "roleAssignments": [{"role": "reader", "identities": ["svc"]}]
        }
    }"#;

    #[test]
    fn parses_the_spec_shape_in_camel_case() {
        let item = AuthorizationItem::from_json(FULL_ITEM).expect("parses");
        assert_eq!(item.mode(), EndpointMode::Enforce);
        assert_eq!(
            DefaultAccess::parse(&item.default_access),
            Some(DefaultAccess::Deny)
        );
        let rules = item.rules.expect("rules");
        let p = &rules.privileges.expect("privileges")[0];
        assert_eq!(p.path, "/metadata/identity/oauth2/token");
        assert_eq!(
            p.query_parameters
                .as_ref()
                .and_then(|q| q.get("resource"))
                .map(String::as_str),
            Some("https://management.azure.com")
        );
        let i = &rules.identities.expect("identities")[0];
        assert_eq!(
            (i.user_name.as_deref(), i.group_name.as_deref()),
            (Some("svc"), Some("g"))
        );
        assert_eq!(
            (i.exe_path.as_deref(), i.process_name.as_deref()),
            (Some("/usr/bin/svc"), Some("svc"))
        );
        assert_eq!(
            rules.role_assignments.expect("assignments")[0].role,
            "reader"
        );
    }

    #[test]
    fn malformed_or_partial_json_is_an_error() {
        let cases = [
            "",
            "{",
            "[]",
            r#"{"mode": "enforce", "id": "x"}"#,
            r#"{"defaultAccess": "deny", "id": "x"}"#,
            r#"{"defaultAccess": "deny", "mode": "enforce", "id": "x", "rules": {"privileges": [{"name": "p"}]}}"#,
            r#"{"defaultAccess": "deny", "mode": "enforce", "id": "x", "rules": {"roles": [{"name": "r", "privileges": "p"}]}}"#,
            r#"{"defaultAccess": 1, "mode": "enforce", "id": "x"}"#,
        ];
        for text in cases {
            let err = AuthorizationItem::from_json(text).expect_err(text);
            assert_eq!(err.field, "json", "{text}");
        }
    }

    #[test]
    fn modes_are_case_insensitive_and_unknown_is_disabled() {
        let cases = [
            ("enforce", EndpointMode::Enforce),
            ("ENFORCE", EndpointMode::Enforce),
            ("Audit", EndpointMode::Audit),
            (" audit ", EndpointMode::Audit),
            ("disabled", EndpointMode::Disabled),
            ("enforcing", EndpointMode::Disabled),
            ("", EndpointMode::Disabled),
        ];
        for (text, mode) in cases {
            assert_eq!(parse_mode(text), mode, "{text:?}");
        }
        assert_eq!(DefaultAccess::parse("ALLOW"), Some(DefaultAccess::Allow));
        assert_eq!(DefaultAccess::parse("permit"), None);
    }

    #[test]
    fn v2_rules_object_and_hostga_follows_wireserver() {
        let text = format!(
            r#"{{"imds": {FULL_ITEM}, "wireserver": {{"defaultAccess": "allow", "mode": "audit", "id": "w"}}, "hostga": {{"defaultAccess": "deny", "mode": "enforce", "id": "h"}}}}"#
        );
        let rules = AuthorizationRules::from_json(&text).expect("parses");
        assert_eq!(
            rules.item(EndpointKind::Imds).map(|i| i.id.as_str()),
            Some("abc")
        );
        assert_eq!(
            rules
                .item(EndpointKind::HostGaPlugin)
                .map(|i| i.id.as_str()),
            Some("w")
        );
        let value: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(AuthorizationRules::from_value(value), Ok(rules));
        assert_eq!(
            AuthorizationRules::from_json("{}"),
            Ok(AuthorizationRules::default())
        );
    }

    #[test]
    fn rule_id_decoding() {
        let on = encoded_id(r#"{"id":"sig-1","useLocalFileRules":true}"#);
        let off = encoded_id(r#"{"id":"sig-2","useLocalFileRules":false}"#);
        let cases = [
            (on.as_str(), "sig-1", true),
            (off.as_str(), "sig-2", false),
            ("plain-id", "plain-id", false),
            // Valid base64, but not JSON.
            ("abcd", "abcd", false),
            ("", "", false),
        ];
        for (raw, id, local) in cases {
            let parsed = RuleId::parse(raw);
            assert_eq!(
                (parsed.logical_id.as_str(), parsed.use_local_file_rules),
                (id, local),
                "{raw}"
            );
        }
    }

    fn remote(id: &str) -> AuthorizationItem {
        AuthorizationItem {
            default_access: "allow".to_owned(),
            mode: "enforce".to_owned(),
            id: id.to_owned(),
            rules: Some(AccessControlRules {
                privileges: Some(vec![Privilege {
                    name: "p".to_owned(),
                    path: "/a".to_owned(),
                    query_parameters: None,
                }]),
                roles: Some(vec![Role {
                    name: "r".to_owned(),
                    privileges: vec!["p".to_owned()],
                }]),
                identities: Some(vec![Identity {
                    name: "i".to_owned(),
                    user_name: Some("root".to_owned()),
                    ..Identity::default()
                }]),
                role_assignments: Some(vec![RoleAssignment {
                    role: "r".to_owned(),
                    identities: vec!["i".to_owned()],
                }]),
            }),
        }
    }

    const LOCAL: &str = r#"{"defaultAccess": "deny", "id": "local-7", "rules": {
        "privileges": [{"name": "p", "path": "/b"}],
        "roles": [{"name": "r", "privileges": ["p"]}],
        "identities": [{"name": "i", "groupName": "ops"}],
        "roleAssignments": [{"role": "r", "identities": ["i"]}]}}"#;

    #[test]
    fn local_file_merges_with_prefix_and_overrides_default_access() {
        let id = encoded_id(r#"{"id":"x","useLocalFileRules":true}"#);
        let (item, outcome) =
            apply_local_rules(remote(&id), LocalFile::Contents(LOCAL), "IMDS_Rules.json");
        assert_eq!(
            outcome,
            LocalOutcome::Merged {
                local_id: Some("local-7".to_owned())
            }
        );
        assert_eq!(
            item.default_access, "deny",
            "the local defaultAccess overrides"
        );
        assert_eq!(item.mode, "enforce", "the remote mode stays");
        let rules = item.rules.expect("rules");
        let names = |v: Option<Vec<Privilege>>| -> Vec<String> {
            v.unwrap_or_default().into_iter().map(|p| p.name).collect()
        };
        assert_eq!(names(rules.privileges), ["p", "LocalFileRules_p"]);
        let roles = rules.roles.expect("roles");
        assert_eq!(roles[1].name, "LocalFileRules_r");
        assert_eq!(roles[1].privileges, ["LocalFileRules_p"]);
        assert_eq!(rules.identities.expect("ids")[1].name, "LocalFileRules_i");
        let assignments = rules.role_assignments.expect("assignments");
        assert_eq!(assignments[1].role, "LocalFileRules_r");
        assert_eq!(assignments[1].identities, ["LocalFileRules_i"]);
    }

    #[test]
    fn local_file_is_ignored_unless_the_remote_id_asks_for_it() {
        for id in [
            "plain".to_owned(),
            encoded_id(r#"{"id":"x","useLocalFileRules":false}"#),
        ] {
            let (item, outcome) =
                apply_local_rules(remote(&id), LocalFile::Contents("not json"), "f");
            assert_eq!(outcome, LocalOutcome::NotRequested);
            assert_eq!(item, remote(&id));
        }
        let id = encoded_id(r#"{"id":"x","useLocalFileRules":true}"#);
        let (item, outcome) = apply_local_rules(remote(&id), LocalFile::Missing, "f");
        assert_eq!((item, outcome), (remote(&id), LocalOutcome::Missing));
    }

    #[test]
    fn local_file_without_rules_only_overrides_default_access() {
        let id = encoded_id(r#"{"useLocalFileRules":true}"#);
        let (item, outcome) = apply_local_rules(
            remote(&id),
            LocalFile::Contents(r#"{"defaultAccess": "DENY"}"#),
            "f",
        );
        assert_eq!(outcome, LocalOutcome::Merged { local_id: None });
        assert_eq!(item.default_access, "DENY");
        assert_eq!(item.rules, remote(&id).rules);
    }

    #[test]
    fn bad_local_files_fail_closed() {
        let id = encoded_id(r#"{"id":"x","useLocalFileRules":true}"#);
        let cases: &[(LocalFile<'_>, &str)] = &[
            (LocalFile::Unreadable("permission denied"), "file"),
            (LocalFile::Contents(""), "json"),
            (
                LocalFile::Contents(r#"{"rules": {"privileges": [{"name": "p"}]}}"#),
                "json",
            ),
            (
                LocalFile::Contents(r#"{"defaultAccess": "maybe"}"#),
                "defaultAccess",
            ),
            (LocalFile::Contents(r#"{"id": " "}"#), "id"),
            (
                LocalFile::Contents(
                    r#"{"rules": {"roleAssignments": [{"role": "ghost", "identities": []}]}}"#,
                ),
                "roleAssignments[0].role",
            ),
            (
                LocalFile::Contents(r#"{"rules": {"identities": [{"name": "nobody"}]}}"#),
                "identities[0] \"nobody\"",
            ),
        ];
        for (local, field) in cases {
            let (item, outcome) = apply_local_rules(remote(&id), *local, "WireServer_Rules.json");
            let LocalOutcome::FailedClosed(err) = outcome else {
                panic!("{local:?}: {outcome:?}");
            };
            assert_eq!(err.scope, "WireServer_Rules.json");
            assert_eq!(err.field, *field, "{local:?}: {err}");
            assert_eq!(item.default_access, "deny");
            assert_eq!(item.rules, None);
            assert_eq!(item.mode, "enforce");
        }
    }
}
