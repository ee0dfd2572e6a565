//! Advanced rules end to end: an identity rule allows one user's curl and denies the same
//! binary run as another user, an exe-path identity tells curl from python, and the policy
//! file reloads on change (an invalid one keeps the previous policy). Needs root.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use fastproxy::demo::NOBODY;
use support::*;

const TOKEN: &str = "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com";
const INSTANCE: &str = "http://169.254.169.254/metadata/instance?api-version=2021-08-01";
/// A uid with no passwd entry: no user name, so no user-name identity can match it.
const STRANGER: (u32, u32) = (65533, 65533);

fn policy(default_access: &str) -> String {
    format!(
        r#"{{"imds": {{"defaultAccess": "{default_access}", "mode": "enforce", "id": "test-imds",
            "rules": {{
              "privileges": [{{"name": "token", "path": "/metadata/identity"}}],
              "roles": [{{"name": "tokenReaders", "privileges": ["token"]}}],
              "identities": [{{"name": "nobodyCurl", "userName": "nobody", "exePath": "/usr/bin/curl"}}],
              "roleAssignments": [{{"role": "tokenReaders", "identities": ["nobodyCurl"]}}]
            }}}}}}"#
    )
}

fn python_get(stack: &Stack, user: (u32, u32), url: &str) -> String {
    let script = format!(
        "import urllib.request,urllib.error\n\
         r=urllib.request.Request('{url}',headers={{'Metadata':'true'}})\n\
         try: print(urllib.request.urlopen(r,timeout=5).status)\n\
         except urllib.error.HTTPError as e: print(e.code)\n"
    );
    stack.python(Some(user), &script).trim().to_owned()
}

#[test]
fn identity_rules_reload_and_fail_safe() {
    if !is_root() {
        eprintln!("SKIPPED policy: needs root");
        return;
    }
    let file = std::env::temp_dir().join(format!("fastproxy-policy-{}.json", std::process::id()));
    std::fs::write(&file, policy("deny")).expect("policy");
    let file_arg = file.display().to_string();
    let Some(stack) = Stack::start_with("policy", &["--policy", &file_arg]) else {
        return;
    };

    // The same binary, two users: nobody's curl holds the token privilege, the stranger's not.
    let allowed = stack.curl(Some(NOBODY), TOKEN, &["Metadata: true"]);
    assert_eq!(
        allowed.status, 200,
        "nobody's curl is assigned the token role"
    );
    let denied = stack.curl(Some(STRANGER), TOKEN, &["Metadata: true"]);
    assert_eq!(denied.status, 403, "the same binary as another user");
    // Another binary as the allowed user: the exe-path identity does not match python.
    assert_eq!(python_get(&stack, NOBODY, TOKEN), "403");
    // A path no privilege covers falls to defaultAccess (deny).
    assert_eq!(
        stack
            .curl(Some(NOBODY), INSTANCE, &["Metadata: true"])
            .status,
        403
    );
    let log = stack.access_log();
    let rule = log
        .iter()
        .find(|e| e["caller_uid"] == STRANGER.0)
        .expect("stranger's request logged");
    assert_eq!(rule["decision"], "deny");
    assert!(
        rule["explanation"]
            .as_str()
            .is_some_and(|e| e.contains(r#"privilege "token""#)),
        "the log names the rule: {rule}"
    );

    // Reload on change: defaultAccess allow opens the uncovered path.
    std::fs::write(&file, policy("allow")).expect("policy");
    let deadline = Instant::now() + Duration::from_secs(10);
    while stack
        .curl(Some(NOBODY), INSTANCE, &["Metadata: true"])
        .status
        != 200
    {
        assert!(
            Instant::now() < deadline,
            "the new policy was not picked up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // An invalid policy keeps the previous one (and says why).
    std::fs::write(&file, "{ not json").expect("policy");
    // SIGHUP forces the reload at once.
    let _ = Command::new("kill")
        .args(["-HUP", &stack.proxy_pid.to_string()])
        .status();
    let text = log_with(&stack.dir.join("proxy.log"), "keeping the previous one");
    assert!(
        text.contains("keeping the previous one"),
        "the invalid policy was reported"
    );
    assert_eq!(
        stack
            .curl(Some(NOBODY), INSTANCE, &["Metadata: true"])
            .status,
        200
    );
    assert_eq!(
        stack
            .curl(Some(STRANGER), TOKEN, &["Metadata: true"])
            .status,
        403
    );
    let _ = std::fs::remove_file(&file);
}

#[test]
fn an_invalid_first_policy_fails_closed() {
    if !is_root() {
        eprintln!("SKIPPED policy: needs root");
        return;
    }
    let file =
        std::env::temp_dir().join(format!("fastproxy-bad-policy-{}.json", std::process::id()));
    std::fs::write(
        &file,
        r#"{"imds": {"defaultAccess": "allow", "mode": "enforce", "id": "x",
        "rules": {"roleAssignments": [{"role": "missing", "identities": ["nobody"]}]}}}"#,
    )
    .expect("policy");
    let file_arg = file.display().to_string();
    let Some(stack) = Stack::start_with("policy-bad", &["--policy", &file_arg]) else {
        return;
    };
    assert_eq!(
        stack
            .curl(Some(NOBODY), INSTANCE, &["Metadata: true"])
            .status,
        403
    );
    let text = log_with(&stack.dir.join("proxy.log"), "deny everything");
    assert!(
        text.contains("unknown role"),
        "the error names what is wrong: {text}"
    );
    let _ = std::fs::remove_file(&file);
}
