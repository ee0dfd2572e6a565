//! The command line and its documentation stay in step: every option `fastproxy run --help`
//! offers is in docs/CONFIG.md with its default, and the doc lists no option that is gone.

use std::collections::BTreeSet;
use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_fastproxy");

fn options_in(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn config_doc_lists_every_run_option_with_its_default() {
    let out = Command::new(EXE)
        .args(["run", "--help"])
        .output()
        .expect("fastproxy runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/CONFIG.md"))
        .expect("docs/CONFIG.md");
    let table: String = doc
        .lines()
        .filter(|l| l.starts_with("| `--"))
        .collect::<Vec<_>>()
        .join("\n");

    let mut offered = options_in(&help);
    offered.remove("--help");
    let documented = options_in(&table);
    assert_eq!(
        offered, documented,
        "options in `run --help` vs docs/CONFIG.md"
    );

    // Defaults shown by --help appear in the doc's row for that option (clap may put an
    // option's description and default on the lines after its name).
    let mut current: Option<&str> = None;
    for line in help.lines() {
        let line = line.trim();
        if let Some(opt) = line
            .split_whitespace()
            .next()
            .filter(|w| w.starts_with("--"))
        {
            current = Some(opt);
        }
        let (Some(opt), Some(start)) = (current, line.find("[default: ")) else {
            continue;
        };
        let rest = &line[start + 10..];
        let default = &rest[..rest.find(']').unwrap_or(rest.len())];
        let row = table
            .lines()
            .find(|r| r.starts_with(&format!("| `{opt}`")))
            .unwrap_or_else(|| panic!("{opt} not documented"));
        assert!(
            row.contains(default),
            "{opt}: default {default} missing from {row}"
        );
    }
}

#[test]
fn bad_arguments_name_the_field() {
    let out = Command::new(EXE)
        .args(["run", "--listen", "127.0.0.1:3080"])
        .output()
        .expect("fastproxy runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid listen") && stderr.contains("privileged"),
        "{stderr}"
    );
    let out = Command::new(EXE)
        .args(["run", "--endpoint", "dns=1.2.3.4:53"])
        .output()
        .expect("fastproxy runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid endpoint"));
}

#[test]
fn rules_explain_names_the_deciding_rule() {
    let file = std::env::temp_dir().join(format!("fastproxy-explain-{}.json", std::process::id()));
    std::fs::write(
        &file,
        r#"{"imds": {"defaultAccess": "deny", "mode": "enforce", "id": "x", "rules": {
          "privileges": [{"name": "token", "path": "/metadata/identity"}],
          "roles": [{"name": "readers", "privileges": ["token"]}],
          "identities": [{"name": "app", "userName": "app"}],
          "roleAssignments": [{"role": "readers", "identities": ["app"]}]}}}"#,
    )
    .expect("policy");
    let explain = |args: &[&str]| {
        let out = Command::new(EXE)
            .args(["rules", "explain", "--policy"])
            .arg(&file)
            .args(args)
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let token = "/metadata/identity/oauth2/token/?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com";
    let allowed = explain(&[
        "--endpoint",
        "imds",
        "--uid",
        "1000",
        "--user",
        "app",
        token,
    ]);
    assert!(
        allowed.starts_with("allow") && allowed.contains(r#"identity "app""#),
        "{allowed}"
    );
    let denied = explain(&[
        "--endpoint",
        "imds",
        "--uid",
        "1000",
        "--user",
        "eve",
        token,
    ]);
    assert!(
        denied.starts_with("deny") && denied.contains(r#"privilege "token""#),
        "{denied}"
    );
    let default = explain(&["--endpoint", "imds", "--uid", "1000", "/metadata/instance"]);
    assert!(default.contains("defaultAccess is deny"), "{default}");
    let root_only = explain(&[
        "--endpoint",
        "wireserver",
        "--uid",
        "1000",
        "/machine/?comp=goalstate",
    ]);
    assert!(root_only.contains("root only"), "{root_only}");
    let _ = std::fs::remove_file(&file);
}
