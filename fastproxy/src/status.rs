//! Provisioning (SPEC-GPA.md section 7): fastproxy is ready when the redirect is loaded, the
//! listeners are up, and a key is latched (or the secure channel is disabled or off), within
//! 2 minutes. The state is served as `GET /provision` on the proxy's own port, read by
//! `fastproxy status --wait N` (and `azure-proxy-agent --status --wait N`, which cloud-init
//! runs), and written as tag files.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// How long provisioning may take before it is finished with an error.
pub const PROVISION_LIMIT: Duration = Duration::from_secs(120);

/// The answer of `GET /provision`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Provision {
    pub finished: bool,
    pub error_message: String,
}

/// Provisioning progress, shared by the main thread (which decides) and the workers (which
/// answer `/provision`).
#[derive(Debug)]
pub struct Provisioning {
    started: Instant,
    limit: Duration,
    state: Mutex<Provision>,
}

impl Default for Provisioning {
    fn default() -> Self {
        Provisioning::new(PROVISION_LIMIT)
    }
}

impl Provisioning {
    /// Provisioning that finishes with an error when not ready within `limit`.
    pub fn new(limit: Duration) -> Self {
        Provisioning {
            started: Instant::now(),
            limit,
            state: Mutex::new(Provision {
                finished: false,
                error_message: String::new(),
            }),
        }
    }

    pub fn get(&self) -> Provision {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-evaluate: `ready` says whether every module is ready, `waiting_for` what is missing.
    /// Returns the new state when it just finished (to write the tag files once).
    pub fn update(&self, ready: bool, waiting_for: &str) -> Option<Provision> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.finished {
            return None;
        }
        if ready {
            state.finished = true;
        } else if self.started.elapsed() >= self.limit {
            state.finished = true;
            state.error_message =
                format!("not ready after {}s: {waiting_for}", self.limit.as_secs());
        } else {
            return None;
        }
        Some(state.clone())
    }
}

/// The JSON body of `GET /provision`.
pub fn provision_json(p: &Provision) -> String {
    serde_json::to_string(p)
        .unwrap_or_else(|_| r#"{"finished":false,"errorMessage":"internal"}"#.to_owned())
}

/// `provisioned.tag` and `status.tag` in `dir` (mode 0600): the status tag is empty on
/// success, else one line per failed module.
pub fn write_tags(dir: &Path, p: &Provision) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    for (name, text) in [
        ("provisioned.tag", String::new()),
        ("status.tag", p.error_message.clone()),
    ] {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dir.join(name))?;
        f.write_all(text.as_bytes())?;
        if !text.is_empty() {
            f.write_all(b"\n")?;
        }
    }
    Ok(())
}

/// Exit code of `status --wait` for a provisioning state (SPEC-GPA.md section 7): 0 finished
/// without error, 2 finished with an error, 1 not finished.
pub fn exit_code(p: Option<&Provision>) -> i32 {
    match p {
        Some(p) if p.finished && p.error_message.is_empty() => 0,
        Some(p) if p.finished => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_exit_codes() {
        let ok = Provision {
            finished: true,
            error_message: String::new(),
        };
        assert_eq!(
            provision_json(&ok),
            r#"{"finished":true,"errorMessage":""}"#
        );
        let failed = Provision {
            finished: true,
            error_message: "key".into(),
        };
        let pending = Provision {
            finished: false,
            error_message: String::new(),
        };
        assert_eq!(exit_code(Some(&ok)), 0);
        assert_eq!(exit_code(Some(&failed)), 2);
        assert_eq!(exit_code(Some(&pending)), 1);
        assert_eq!(exit_code(None), 1);
    }

    #[test]
    fn finishes_once() {
        let p = Provisioning::default();
        assert_eq!(p.update(false, "key"), None);
        assert!(p.update(true, "").is_some());
        assert_eq!(p.update(true, ""), None, "only once");
        assert!(p.get().finished);
    }
}
