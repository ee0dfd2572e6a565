//! Where the rules come from, and reloading them. Sources, in order: fastproxy's policy file
//! (`--policy`, the `authorizationRules` JSON object described in docs/POLICY.md), else the
//! rules the secure-channel status delivers (v2.0); then the Guest Proxy Agent's local rule
//! files are merged as GPA merges them. A new policy is compiled once and swapped in
//! atomically: every core sees it on its next request. An invalid new policy keeps the old
//! one (and says why); with no valid policy ever loaded, the rules deny everything.

use std::path::PathBuf;
use std::time::SystemTime;

use super::compile::{CompiledPolicy, CompiledRules, PolicyError};
use super::model::{
    apply_local_rules, local_rules_file_name, AuthorizationRules, LocalFile, LocalOutcome,
};
use crate::upstream::EndpointKind;

/// Where to read rules from.
#[derive(Debug, Clone)]
pub struct PolicySources {
    /// fastproxy's own policy file; when set, it replaces the rules of the status.
    pub policy_file: Option<PathBuf>,
    /// The directory of GPA's `WireServer_Rules.json` and `IMDS_Rules.json`.
    pub local_rules_dir: PathBuf,
}

/// What a policy was built from, to notice a change without re-reading the files.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint {
    files: Vec<Option<(SystemTime, u64)>>,
    remote: Option<String>,
}

impl PolicySources {
    fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.policy_file.iter().cloned().collect();
        for kind in [EndpointKind::WireServer, EndpointKind::Imds] {
            files.push(self.local_rules_dir.join(local_rules_file_name(kind)));
        }
        files
    }

    /// The current fingerprint of the sources (file times and sizes, and the remote rules).
    pub fn fingerprint(&self, remote: Option<&serde_json::Value>) -> Fingerprint {
        Fingerprint {
            files: self
                .files()
                .iter()
                .map(|f| {
                    let m = std::fs::metadata(f).ok()?;
                    Some((m.modified().ok()?, m.len()))
                })
                .collect(),
            remote: remote.map(|v| v.to_string()),
        }
    }

    /// Read, merge and compile the rules. `Ok(None)`: there are no advanced rules at all.
    pub fn build(
        &self,
        remote: Option<&serde_json::Value>,
    ) -> Result<Option<CompiledPolicy>, PolicyError> {
        let mut rules = match (&self.policy_file, remote) {
            (Some(file), _) => {
                let text = std::fs::read_to_string(file).map_err(|e| {
                    PolicyError::new(&file.display().to_string(), "file", e.to_string())
                })?;
                AuthorizationRules::from_json(&text)?
            }
            (None, Some(value)) => AuthorizationRules::from_value(value.clone())?,
            (None, None) => return Ok(None),
        };
        for kind in [EndpointKind::WireServer, EndpointKind::Imds] {
            let slot = match kind {
                EndpointKind::Imds => &mut rules.imds,
                _ => &mut rules.wireserver,
            };
            let Some(item) = slot.take() else { continue };
            let name = local_rules_file_name(kind);
            let path = self.local_rules_dir.join(name);
            let read = std::fs::read_to_string(&path);
            let local = match &read {
                Ok(text) => LocalFile::Contents(text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => LocalFile::Missing,
                Err(_) => LocalFile::Unreadable("unreadable"),
            };
            let (merged, outcome) = apply_local_rules(item, local, name);
            if let LocalOutcome::Merged { .. } = outcome {
                tracing::info!(file = %path.display(), "local rules merged");
            }
            *slot = Some(merged);
        }
        CompiledPolicy::compile(&rules).map(Some)
    }
}

/// The policy used when no valid one was ever loaded: the rules deny everything (the built-in
/// rules still let root through).
pub fn fail_closed(reason: &str) -> CompiledPolicy {
    CompiledPolicy::new(
        Some(CompiledRules::deny_all(reason)),
        Some(CompiledRules::deny_all(reason)),
    )
}
