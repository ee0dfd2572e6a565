//! Validation and compilation of rule documents into the matcher that `evaluate` walks.
//!
//! Runs once per rule change, never per request: names are resolved to indices, privilege paths
//! are put in canonical form, required query pairs are lower-cased, and each privilege gets the
//! deduplicated list of identities that may use it. Anything doubtful is a [`PolicyError`] that
//! names the item and field: unknown or empty names, duplicates, an identity that sets no
//! field, a path with no canonical form, an invalid `defaultAccess`. The caller then keeps its
//! old policy, or denies when there is none (fail closed).
//!
//! Trade-off: validation is stricter than the Guest Proxy Agent's for remote rules (GPA checks
//! only local files this hard, and silently skips dangling references in remote ones), so a
//! rule set GPA would half-apply is refused here as a whole; a half-applied rule set can grant
//! or deny what its author never wrote. Privileges that no role assignment reaches are checked
//! but not compiled: in GPA they never take part in a decision, and here neither.

use std::collections::HashMap;

use thiserror::Error;

use super::canonical::canonical_rule_path;
use super::model::{
    parse_mode, AccessControlRules, AuthorizationItem, AuthorizationRules, DefaultAccess,
};
use crate::upstream::{EndpointKind, EndpointMode};

/// A rule document that cannot be used: where, and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{scope}: {field}: {problem}")]
pub struct PolicyError {
    /// The document: `imds`, `wireserver`, a local rule file's name.
    pub scope: String,
    /// The item and field, e.g. `roleAssignments[2].identities[0]`.
    pub field: String,
    pub problem: String,
}

impl PolicyError {
    pub fn new(scope: &str, field: impl Into<String>, problem: impl Into<String>) -> Self {
        PolicyError {
            scope: scope.to_owned(),
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// Name → position of the privileges, roles and identities of one rule set.
#[derive(Debug, Default)]
pub(crate) struct RuleIndex<'a> {
    privileges: HashMap<&'a str, usize>,
    roles: HashMap<&'a str, usize>,
    identities: HashMap<&'a str, usize>,
}

fn blank(s: &str) -> bool {
    s.trim().is_empty()
}

/// Check one rule set on its own and index its names.
pub(crate) fn validate_rules<'a>(
    scope: &str,
    rules: &'a AccessControlRules,
) -> Result<RuleIndex<'a>, PolicyError> {
    let err = |field: String, problem: String| PolicyError::new(scope, field, problem);
    let mut index = RuleIndex::default();

    for (i, p) in rules.privileges.iter().flatten().enumerate() {
        if blank(&p.name) {
            return Err(err(format!("privileges[{i}].name"), "empty".into()));
        }
        if index.privileges.insert(&p.name, i).is_some() {
            return Err(err(
                format!("privileges[{i}].name"),
                format!("duplicate privilege {:?}", p.name),
            ));
        }
        if let Err(e) = canonical_rule_path(&p.path) {
            return Err(err(
                format!("privileges[{i}] {:?}.path", p.name),
                format!("{:?}: {e}", p.path),
            ));
        }
        let mut keys: HashMap<String, &str> = HashMap::new();
        for (key, value) in p.query_parameters.iter().flatten() {
            let field = || format!("privileges[{i}] {:?}.queryParameters.{key}", p.name);
            if blank(key) || blank(value) {
                return Err(err(field(), "empty key or value".into()));
            }
            if key
                .bytes()
                .chain(value.bytes())
                .any(|b| b < 0x20 || b == 0x7f)
            {
                return Err(err(field(), "control character".into()));
            }
            // Keys match case-insensitively, so two spellings of one key must agree.
            let lower = key.to_ascii_lowercase();
            if let Some(other) = keys.insert(lower, value) {
                if !other.eq_ignore_ascii_case(value) {
                    return Err(err(
                        field(),
                        "the key is given twice with other values".into(),
                    ));
                }
            }
        }
    }

    for (i, r) in rules.roles.iter().flatten().enumerate() {
        if blank(&r.name) {
            return Err(err(format!("roles[{i}].name"), "empty".into()));
        }
        if index.roles.insert(&r.name, i).is_some() {
            return Err(err(
                format!("roles[{i}].name"),
                format!("duplicate role {:?}", r.name),
            ));
        }
        if r.privileges.is_empty() {
            return Err(err(
                format!("roles[{i}] {:?}.privileges", r.name),
                "names no privilege".into(),
            ));
        }
        for (j, name) in r.privileges.iter().enumerate() {
            let field = || format!("roles[{i}] {:?}.privileges[{j}]", r.name);
            if !index.privileges.contains_key(name.as_str()) {
                return Err(err(field(), format!("unknown privilege {name:?}")));
            }
            if r.privileges[..j].contains(name) {
                return Err(err(field(), format!("privilege {name:?} named twice")));
            }
        }
    }

    for (i, id) in rules.identities.iter().flatten().enumerate() {
        if blank(&id.name) {
            return Err(err(format!("identities[{i}].name"), "empty".into()));
        }
        if index.identities.insert(&id.name, i).is_some() {
            return Err(err(
                format!("identities[{i}].name"),
                format!("duplicate identity {:?}", id.name),
            ));
        }
        let fields = [
            &id.user_name,
            &id.group_name,
            &id.exe_path,
            &id.process_name,
        ];
        if !fields
            .iter()
            .any(|f| f.as_deref().is_some_and(|v| !blank(v)))
        {
            // It would match every caller: surely not what its author meant.
            return Err(err(
                format!("identities[{i}] {:?}", id.name),
                "sets none of userName, groupName, exePath, processName".into(),
            ));
        }
    }

    for (i, a) in rules.role_assignments.iter().flatten().enumerate() {
        if !index.roles.contains_key(a.role.as_str()) {
            return Err(err(
                format!("roleAssignments[{i}].role"),
                format!("unknown role {:?}", a.role),
            ));
        }
        if a.identities.is_empty() {
            return Err(err(
                format!("roleAssignments[{i}].identities"),
                "names no identity".into(),
            ));
        }
        for (j, name) in a.identities.iter().enumerate() {
            let field = || format!("roleAssignments[{i}].identities[{j}]");
            if !index.identities.contains_key(name.as_str()) {
                return Err(err(field(), format!("unknown identity {name:?}")));
            }
            if a.identities[..j].contains(name) {
                return Err(err(field(), format!("identity {name:?} named twice")));
            }
        }
    }
    Ok(index)
}

/// A query key a privilege requires, with its value; both lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueryRequirement {
    pub(crate) key: Box<[u8]>,
    pub(crate) value: Box<[u8]>,
}

/// One privilege, ready to match a canonical request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivilegeMatcher {
    pub(crate) name: String,
    /// The path as the rule wrote it (for explanations).
    pub(crate) rule_path: String,
    /// Canonical: lower-cased, dot segments resolved, no trailing `/` (root is empty).
    pub(crate) path: Box<[u8]>,
    /// Required query pairs, lower-cased.
    pub(crate) query: Box<[QueryRequirement]>,
    /// Indices into `CompiledRules::identities`, deduplicated.
    pub(crate) grants: Box<[u32]>,
}

impl PrivilegeMatcher {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn rule_path(&self) -> &str {
        &self.rule_path
    }
}

/// One identity, ready to match a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityMatcher {
    pub(crate) name: String,
    pub(crate) user_name: Option<Box<str>>,
    pub(crate) group_name: Option<Box<str>>,
    pub(crate) exe_path: Option<Box<str>>,
    pub(crate) process_name: Option<Box<str>>,
    /// A field is set to an empty value: GPA compares it and never matches; so does this.
    pub(crate) never: bool,
}

impl IdentityMatcher {
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The rules of one endpoint, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledRules {
    pub(crate) id: String,
    pub(crate) mode: EndpointMode,
    pub(crate) default_allow: bool,
    pub(crate) privileges: Vec<PrivilegeMatcher>,
    pub(crate) identities: Vec<IdentityMatcher>,
}

impl CompiledRules {
    /// Validate and compile one endpoint's item (`scope` names it in errors).
    pub fn compile(scope: &str, item: &AuthorizationItem) -> Result<Self, PolicyError> {
        let default_allow = match DefaultAccess::parse(&item.default_access) {
            Some(access) => access == DefaultAccess::Allow,
            None => {
                return Err(PolicyError::new(
                    scope,
                    "defaultAccess",
                    format!("{:?} is neither allow nor deny", item.default_access),
                ))
            }
        };
        let mut compiled = CompiledRules {
            id: item.id.clone(),
            mode: parse_mode(&item.mode),
            default_allow,
            privileges: Vec::new(),
            identities: Vec::new(),
        };
        let Some(rules) = &item.rules else {
            return Ok(compiled);
        };
        let index = validate_rules(scope, rules)?;
        let privileges = rules.privileges.as_deref().unwrap_or_default();
        let roles = rules.roles.as_deref().unwrap_or_default();
        compiled.identities = rules
            .identities
            .iter()
            .flatten()
            .map(|id| {
                let field = |f: &Option<String>| f.as_deref().map(Box::from);
                let all = [
                    &id.user_name,
                    &id.group_name,
                    &id.exe_path,
                    &id.process_name,
                ];
                IdentityMatcher {
                    name: id.name.clone(),
                    user_name: field(&id.user_name),
                    group_name: field(&id.group_name),
                    exe_path: field(&id.exe_path),
                    process_name: field(&id.process_name),
                    never: all.iter().any(|f| f.as_deref().is_some_and(blank)),
                }
            })
            .collect();

        // In GPA a privilege takes part only through a role assignment; walk them in order.
        let mut position: HashMap<usize, usize> = HashMap::new();
        let mut grants: Vec<Vec<u32>> = Vec::new();
        for assignment in rules.role_assignments.iter().flatten() {
            let Some(role) = index
                .roles
                .get(assignment.role.as_str())
                .map(|&r| &roles[r])
            else {
                continue; // validated above
            };
            let identities: Vec<u32> = assignment
                .identities
                .iter()
                .filter_map(|name| index.identities.get(name.as_str()))
                .map(|&i| i as u32)
                .collect();
            for name in &role.privileges {
                let Some(&p) = index.privileges.get(name.as_str()) else {
                    continue; // validated above
                };
                let slot = *position.entry(p).or_insert_with(|| {
                    grants.push(Vec::new());
                    grants.len() - 1
                });
                for &i in &identities {
                    if !grants[slot].contains(&i) {
                        grants[slot].push(i);
                    }
                }
            }
        }
        let mut order: Vec<(usize, usize)> = position.into_iter().collect();
        order.sort_by_key(|&(_, slot)| slot);
        for (p, slot) in order {
            let privilege = &privileges[p];
            let path = canonical_rule_path(&privilege.path).map_err(|e| {
                PolicyError::new(scope, format!("privileges[{p}].path"), e.to_string())
            })?;
            let query = privilege
                .query_parameters
                .iter()
                .flatten()
                .map(|(k, v)| QueryRequirement {
                    key: k.to_ascii_lowercase().into_bytes().into_boxed_slice(),
                    value: v.to_ascii_lowercase().into_bytes().into_boxed_slice(),
                })
                .collect();
            compiled.privileges.push(PrivilegeMatcher {
                name: privilege.name.clone(),
                rule_path: privilege.path.clone(),
                path: path.into_bytes().into_boxed_slice(),
                query,
                grants: std::mem::take(&mut grants[slot]).into_boxed_slice(),
            });
        }
        Ok(compiled)
    }

    /// Rules that refuse everything: the fail-closed policy when no valid one was ever loaded.
    pub fn deny_all(id: &str) -> Self {
        CompiledRules {
            id: id.to_owned(),
            mode: EndpointMode::Enforce,
            default_allow: false,
            privileges: Vec::new(),
            identities: Vec::new(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn mode(&self) -> EndpointMode {
        self.mode
    }

    pub fn default_allows(&self) -> bool {
        self.default_allow
    }

    /// The privileges that take part in decisions, in evaluation order.
    pub fn privileges(&self) -> &[PrivilegeMatcher] {
        &self.privileges
    }

    pub fn identities(&self) -> &[IdentityMatcher] {
        &self.identities
    }
}

/// The rules of every endpoint, compiled: an immutable snapshot the proxy swaps as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CompiledPolicy {
    pub(crate) wireserver: Option<CompiledRules>,
    pub(crate) imds: Option<CompiledRules>,
}

impl CompiledPolicy {
    /// No advanced rules: only the built-in ones decide.
    pub fn builtin_only() -> Self {
        CompiledPolicy::default()
    }

    /// From separately compiled endpoint rules (one endpoint's bad rules need not cost the
    /// other its good ones). HostGAPlugin is judged by `wireserver`.
    pub fn new(wireserver: Option<CompiledRules>, imds: Option<CompiledRules>) -> Self {
        CompiledPolicy { wireserver, imds }
    }

    /// Compile the v2.0 `authorizationRules` (after local files were applied to its items).
    pub fn compile(rules: &AuthorizationRules) -> Result<Self, PolicyError> {
        let compile = |scope: &str, item: &Option<AuthorizationItem>| {
            item.as_ref()
                .map(|i| CompiledRules::compile(scope, i))
                .transpose()
        };
        Ok(CompiledPolicy {
            wireserver: compile("wireserver", &rules.wireserver)?,
            imds: compile("imds", &rules.imds)?,
        })
    }

    /// The rules that judge `kind`, whatever their mode.
    pub fn rules(&self, kind: EndpointKind) -> Option<&CompiledRules> {
        match kind {
            EndpointKind::WireServer | EndpointKind::HostGaPlugin => self.wireserver.as_ref(),
            EndpointKind::Imds => self.imds.as_ref(),
        }
    }

    /// The rules that judge `kind` if they are in force (mode audit or enforce).
    pub fn active_rules(&self, kind: EndpointKind) -> Option<&CompiledRules> {
        self.rules(kind)
            .filter(|r| r.mode != EndpointMode::Disabled)
    }

    /// The rules' mode for `kind`; `disabled` without rules (SPEC-GPA.md section 6.1).
    pub fn mode(&self, kind: EndpointKind) -> EndpointMode {
        self.rules(kind).map_or(EndpointMode::Disabled, |r| r.mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(rules: &str) -> AuthorizationItem {
        AuthorizationItem::from_json(&format!(
            r#"{{"defaultAccess": "deny", "mode": "enforce", "id": "t", "rules": {rules}}}"#
        ))
        .expect("json")
    }

    const P: &str = r#""privileges": [{"name": "p", "path": "/a"}, {"name": "q", "path": "/b"}]"#;
    const R: &str = r#""roles": [{"name": "r", "privileges": ["p"]}]"#;
    const I: &str = r#""identities": [{"name": "i", "userName": "u"}]"#;

    #[test]
    fn invalid_rule_sets_name_the_item_and_field() {
        let cases: &[(String, &str, &str)] = &[
            (
                format!(r#"{{{P}, {R}, {I}, "roleAssignments": [{{"role": "ghost", "identities": ["i"]}}]}}"#),
                "roleAssignments[0].role",
                "unknown role \"ghost\"",
            ),
            (
                format!(r#"{{{P}, {R}, {I}, "roleAssignments": [{{"role": "r", "identities": ["i", "nobody"]}}]}}"#),
                "roleAssignments[0].identities[1]",
                "unknown identity \"nobody\"",
            ),
            (
                format!(r#"{{{P}, {I}, "roles": [{{"name": "r", "privileges": ["p", "zz"]}}]}}"#),
                "roles[0] \"r\".privileges[1]",
                "unknown privilege \"zz\"",
            ),
            (
                format!(r#"{{{P}, {I}, "roles": [{{"name": "r", "privileges": ["p", "p"]}}]}}"#),
                "roles[0] \"r\".privileges[1]",
                "privilege \"p\" named twice",
            ),
            (
                format!(r#"{{{P}, {I}, "roles": [{{"name": "r", "privileges": []}}]}}"#),
                "roles[0] \"r\".privileges",
                "names no privilege",
            ),
            (
                format!(r#"{{{P}, {R}, {I}, "roleAssignments": [{{"role": "r", "identities": []}}]}}"#),
                "roleAssignments[0].identities",
                "names no identity",
            ),
            (
                r#"{"privileges": [{"name": "p", "path": "/a"}, {"name": "p", "path": "/b"}]}"#.into(),
                "privileges[1].name",
                "duplicate privilege \"p\"",
            ),
            (
                r#"{"privileges": [{"name": " ", "path": "/a"}]}"#.into(),
                "privileges[0].name",
                "empty",
            ),
            (
                format!(r#"{{{P}, "roles": [{{"name": "", "privileges": ["p"]}}]}}"#),
                "roles[0].name",
                "empty",
            ),
            (
                format!(r#"{{{P}, "roles": [{{"name": "r", "privileges": ["p"]}}, {{"name": "r", "privileges": ["q"]}}]}}"#),
                "roles[1].name",
                "duplicate role \"r\"",
            ),
            (
                r#"{"identities": [{"name": "i", "userName": "u"}, {"name": "i", "exePath": "/x"}]}"#.into(),
                "identities[1].name",
                "duplicate identity \"i\"",
            ),
            (
                r#"{"identities": [{"name": "", "userName": "u"}]}"#.into(),
                "identities[0].name",
                "empty",
            ),
            (
                r#"{"identities": [{"name": "anyone"}]}"#.into(),
                "identities[0] \"anyone\"",
                "sets none of userName, groupName, exePath, processName",
            ),
            (
                r#"{"identities": [{"name": "anyone", "userName": " ", "groupName": null}]}"#.into(),
                "identities[0] \"anyone\"",
                "sets none of userName, groupName, exePath, processName",
            ),
            (
                r#"{"privileges": [{"name": "p", "path": "/a//b"}]}"#.into(),
                "privileges[0] \"p\".path",
                "\"/a//b\": empty path segment (//)",
            ),
            (
                r#"{"privileges": [{"name": "p", "path": "/../x"}]}"#.into(),
                "privileges[0] \"p\".path",
                "\"/../x\": .. climbs above the root",
            ),
            (
                r#"{"privileges": [{"name": "p", "path": ""}]}"#.into(),
                "privileges[0] \"p\".path",
                "\"\": path does not start with /",
            ),
            (
                r#"{"privileges": [{"name": "p", "path": "/machine?comp=goalstate"}]}"#.into(),
                "privileges[0] \"p\".path",
                "\"/machine?comp=goalstate\": ? in a rule path",
            ),
            (
                r#"{"privileges": [{"name": "p", "path": "/a", "queryParameters": {"k": ""}}]}"#.into(),
                "privileges[0] \"p\".queryParameters.k",
                "empty key or value",
            ),
            (
                r#"{"privileges": [{"name": "p", "path": "/a", "queryParameters": {"K": "x", "k": "y"}}]}"#.into(),
                "privileges[0] \"p\".queryParameters.k",
                "the key is given twice with other values",
            ),
        ];
        for (rules, field, problem) in cases {
            let err = CompiledRules::compile("imds", &item(rules)).expect_err(rules);
            assert_eq!(
                (err.scope.as_str(), err.field.as_str(), err.problem.as_str()),
                ("imds", *field, *problem),
                "{rules}"
            );
        }
    }

    #[test]
    fn default_access_must_be_allow_or_deny() {
        let mut it = item("{}");
        for (text, allow) in [("allow", true), ("Deny", false), (" ALLOW ", true)] {
            it.default_access = text.into();
            let compiled = CompiledRules::compile("imds", &it).expect(text);
            assert_eq!(compiled.default_allows(), allow, "{text}");
        }
        it.default_access = "open".into();
        let err = CompiledRules::compile("imds", &it).expect_err("open");
        assert_eq!(
            err.to_string(),
            "imds: defaultAccess: \"open\" is neither allow nor deny"
        );
    }

    #[test]
    fn privileges_get_deduplicated_identities_through_assignments_only() {
        let rules = r#"{
            "privileges": [{"name": "unused", "path": "/u"},
                           {"name": "p", "path": "/A/./b/", "queryParameters": {"Resource": "HTTPS://X"}},
                           {"name": "q", "path": "/c"}],
            "roles": [{"name": "r1", "privileges": ["p"]}, {"name": "r2", "privileges": ["q", "p"]},
                      {"name": "never", "privileges": ["unused"]}],
            "identities": [{"name": "i1", "userName": "a"}, {"name": "i2", "groupName": "g"},
                           {"name": "i3", "exePath": "/bin/x", "userName": ""}],
            "roleAssignments": [{"role": "r1", "identities": ["i2", "i1"]},
                                {"role": "r2", "identities": ["i1", "i3"]}]
        }"#;
        let compiled = CompiledRules::compile("imds", &item(rules)).expect("compiles");
        let summary: Vec<(&str, &[u8], Vec<u32>)> = compiled
            .privileges()
            .iter()
            .map(|p| (p.name(), &p.path[..], p.grants.to_vec()))
            .collect();
        assert_eq!(
            summary,
            [
                ("p", &b"/a/b"[..], vec![1, 0, 2]),
                ("q", &b"/c"[..], vec![0, 2]),
            ]
        );
        let p = &compiled.privileges()[0];
        assert_eq!(p.query.len(), 1);
        assert_eq!(
            (&p.query[0].key[..], &p.query[0].value[..]),
            (&b"resource"[..], &b"https://x"[..])
        );
        assert!(
            compiled.identities()[2].never,
            "an empty userName never matches"
        );
        assert!(!compiled.identities()[0].never);
    }

    #[test]
    fn policy_modes_and_hostga() {
        let rules = AuthorizationRules::from_json(
            r#"{"wireserver": {"defaultAccess": "deny", "mode": "Audit", "id": "w"},
                "imds": {"defaultAccess": "allow", "mode": "bogus", "id": "i"}}"#,
        )
        .expect("json");
        let policy = CompiledPolicy::compile(&rules).expect("compiles");
        assert_eq!(policy.mode(EndpointKind::WireServer), EndpointMode::Audit);
        assert_eq!(policy.mode(EndpointKind::HostGaPlugin), EndpointMode::Audit);
        assert_eq!(policy.mode(EndpointKind::Imds), EndpointMode::Disabled);
        assert!(policy.active_rules(EndpointKind::Imds).is_none());
        assert_eq!(
            policy
                .rules(EndpointKind::HostGaPlugin)
                .map(CompiledRules::id),
            Some("w")
        );
        let empty = CompiledPolicy::builtin_only();
        assert_eq!(empty.mode(EndpointKind::WireServer), EndpointMode::Disabled);
        let bad = AuthorizationRules::from_json(
            r#"{"imds": {"defaultAccess": "deny", "mode": "enforce", "id": "i",
                "rules": {"roleAssignments": [{"role": "r", "identities": ["x"]}]}}}"#,
        )
        .expect("json");
        let err = CompiledPolicy::compile(&bad).expect_err("dangling");
        assert_eq!(err.scope, "imds");
    }
}
