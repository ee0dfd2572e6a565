//! End-to-end tests: the real kernel programs, the real proxy binary, real curl, and the
//! stand-in endpoints, inside a private network namespace and a child cgroup per test.
//!
//! These need root (eBPF, namespaces, cgroups). Without it each test prints a loud SKIPPED
//! line and passes; CI runs as root, so there they run.

mod support;

use std::process::Command;

use fastproxy::demo::NOBODY;
use fastproxy_standin::Endpoint;
use serde_json::Value;
use support::*;

#[test]
fn root_reaches_wireserver_with_root_claims_and_caller_identity() {
    let Some(stack) = Stack::start("e2e-root") else {
        return;
    };
    let tag = tag_header("root-ws");
    let res = stack.curl(
        None,
        &format!("{WIRESERVER}/machine/?comp=goalstate"),
        &["x-ms-version: 2012-11-30", &tag],
    );
    assert_eq!(res.status, 200);
    assert_eq!(
        res.header("x-ms-azure-host-authorization"),
        Some("value"),
        "marker on the response"
    );
    assert!(
        String::from_utf8_lossy(&res.body).contains("<GoalState"),
        "goal state relayed"
    );

    // Exactly one request reached WireServer (no redirect loop), with the root claims.
    let seen = stack.records_tagged("root-ws");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].endpoint, Endpoint::WireServer);
    assert_eq!(
        seen[0].header("x-ms-azure-host-claims"),
        Some(r#"{ "isRoot": "true"}"#)
    );

    // The record the proxy read names the curl process itself.
    let log = stack.access_log();
    let entry = log
        .iter()
        .find(|e| e["path"] == "/machine/" && e["endpoint"] == "wireserver")
        .unwrap_or_else(|| panic!("no access-log entry in {log:?}"));
    assert_eq!(entry["caller_pid"], res.pid, "pid of curl");
    assert_eq!(entry["caller_uid"], 0);
    assert_eq!(entry["caller_comm"], "curl");
    // Enriched lazily from /proc and NSS, guarded by the recorded start time.
    assert!(
        entry["caller_exe"]
            .as_str()
            .is_some_and(|e| e.ends_with("/curl")),
        "{entry}"
    );
    assert_eq!(entry["caller_user"], "root");
    // The first request of a (user, client, destination, process, status) key in a
    // 15-minute bucket is reported once as a connection summary.
    let log = std::fs::read_to_string(stack.dir.join("proxy.log")).expect("log");
    let summary = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["target"] == "fastproxy::summary")
        .expect("a connection summary event");
    assert_eq!(summary["user"], "root");
    assert!(
        summary["cmdline"]
            .as_str()
            .is_some_and(|c| c.starts_with("curl ")),
        "{summary}"
    );
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["decision"], "allow");
}

#[test]
fn nobody_is_refused_wireserver_and_hostga_but_reaches_imds() {
    let Some(stack) = Stack::start("e2e-nobody") else {
        return;
    };
    let ws = stack.curl(
        Some(NOBODY),
        &format!("{WIRESERVER}/machine/?comp=goalstate"),
        &[&tag_header("nb-ws")],
    );
    assert_eq!(ws.status, 403);
    assert_eq!(ws.header("connection"), Some("close"));
    assert_eq!(ws.header("x-ms-azure-host-authorization"), Some("value"));
    let ga = stack.curl(
        Some(NOBODY),
        &format!("{HOSTGA}/vmSettings"),
        &[&tag_header("nb-ga")],
    );
    assert_eq!(ga.status, 403);
    assert!(
        stack.records_tagged("nb-ws").is_empty(),
        "a refused request reached WireServer"
    );
    assert!(
        stack.records_tagged("nb-ga").is_empty(),
        "a refused request reached HostGAPlugin"
    );

    let imds = stack.curl(
        Some(NOBODY),
        &format!("{IMDS}/metadata/instance?api-version=2021-08-01"),
        &["Metadata: true", &tag_header("nb-imds")],
    );
    assert_eq!(imds.status, 200);
    assert_eq!(imds.header("x-ms-azure-host-authorization"), Some("value"));
    let seen = stack.records_tagged("nb-imds");
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("x-ms-azure-host-claims"),
        Some(r#"{ "isRoot": "false"}"#)
    );
    assert_eq!(
        seen[0].header("x-forwarded-for"),
        None,
        "IMDS rejects X-Forwarded-For"
    );

    let log = stack.access_log();
    let entry = log
        .iter()
        .find(|e| e["endpoint"] == "imds")
        .expect("access-log entry for IMDS");
    assert_eq!(
        entry["caller_pid"], imds.pid,
        "pid of the unprivileged curl"
    );
    assert_eq!(entry["caller_uid"], NOBODY.0);
    let denied = log
        .iter()
        .find(|e| e["endpoint"] == "wireserver")
        .expect("access-log entry for the refusal");
    assert_eq!(
        (denied["decision"].as_str(), denied["status"].as_u64()),
        (Some("deny"), Some(403))
    );
    assert_eq!(denied["caller_pid"], ws.pid);
}

#[test]
fn client_copies_of_proxy_headers_are_replaced() {
    let Some(stack) = Stack::start("e2e-forge") else {
        return;
    };
    let res = stack.curl(
        Some(NOBODY),
        &format!("{IMDS}/metadata/instance?api-version=2021-08-01"),
        &[
            "Metadata: true",
            r#"x-ms-azure-host-claims: { "isRoot": "true"}"#,
            "x-ms-azure-host-authorization: Azure-HMAC-SHA256 forged",
            &tag_header("forge"),
        ],
    );
    assert_eq!(res.status, 200);
    let seen = stack.records_tagged("forge");
    assert_eq!(seen.len(), 1);
    let claims: Vec<_> = seen[0]
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-ms-azure-host-claims"))
        .collect();
    assert_eq!(
        claims.len(),
        1,
        "exactly one claims header upstream: {claims:?}"
    );
    assert_eq!(claims[0].1, r#"{ "isRoot": "false"}"#);
    assert_eq!(seen[0].header("x-ms-azure-host-authorization"), None);
}

#[test]
fn direct_connections_get_local_paths_only() {
    let Some(stack) = Stack::start_with("e2e-direct", &["--status-interval", "1"]) else {
        return;
    };
    // From a process the programs see, a direct connect to the proxy is recorded too: it may
    // ask for the local paths, nothing else reaches an endpoint.
    let proxied = stack.curl(
        None,
        "http://127.0.0.1:308/machine/?comp=goalstate",
        &[&tag_header("direct")],
    );
    assert_eq!(proxied.status, 403, "aimed at the proxy itself");
    assert_eq!(proxied.header("connection"), Some("close"));
    let provision = stack.curl(
        Some(NOBODY),
        "http://127.0.0.1:308/provision",
        &["Metadata: true"],
    );
    assert_eq!(provision.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&provision.body),
        r#"{"finished":true,"errorMessage":""}"#
    );
    assert_eq!(
        stack
            .curl(None, "http://127.0.0.1:308/provision", &[])
            .status,
        400,
        "Metadata required"
    );
    // The aggregated status is for root callers only.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let status = stack.curl(
        None,
        "http://127.0.0.1:308/gpa-aggregated-status",
        &["Metadata: true"],
    );
    assert_eq!(status.status, 200);
    let report: Value = serde_json::from_slice(&status.body).expect("JSON");
    assert_eq!(report["proxyAgentStatus"]["status"], "SUCCESS", "{report}");
    let refused = stack.curl(
        Some(NOBODY),
        "http://127.0.0.1:308/gpa-aggregated-status",
        &["Metadata: true"],
    );
    assert_eq!(refused.status, 403);
    // From outside the guarded cgroup there is no record at all: 421.
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "http://127.0.0.1:308/machine/?comp=goalstate",
    ]);
    let (_, out) = stack.sandbox.run_outside_cgroup(cmd).expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "421");
    assert!(stack.records().is_empty(), "nothing reached an endpoint");
}

#[test]
fn malformed_head_gets_400_and_is_never_forwarded() {
    let Some(stack) = Stack::start("e2e-400") else {
        return;
    };
    let cases: &[(&[u8], &str)] = &[
        (b"GET /?comp=versions HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "400"),
        (b"POST /machine?comp=health HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "400"),
        (b"GET /?comp=versions HTTP/1.1\nHost: a\n\n", "400"),
        (b"TRACE / HTTP/1.1\r\nHost: a\r\n\r\n", "405"),
        (b"GET //machine HTTP/1.1\r\nHost: a\r\n\r\n", "403"),
        (b"GET /?comp=versions HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n", "400"),
        (b"GET /?comp=versions HTTP/1.1\r\nHost: 168.63.129.16:32526\r\n\r\n", "400"),
        (b"GET /?comp=versions HTTP/1.1\r\nHost: a\r\n\r\nGARBAGE\r\n\r\n", "200"),
    ];
    for (payload, want) in cases {
        let out = stack.python(None, &raw_exchange_script(("168.63.129.16", 80), payload));
        let first = out.lines().next().unwrap_or("");
        assert!(
            first.starts_with(&format!("HTTP/1.1 {want} ")),
            "{:?} -> {out:?}",
            String::from_utf8_lossy(payload)
        );
        if *want != "200" {
            assert!(out.contains("Connection: close\r\n"), "{out:?}");
        }
        if *want == "405" {
            assert!(out.contains("Allow: GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH\r\n"));
        }
    }
    // Only the one valid request was forwarded; the garbage after it was answered 400.
    let records = stack.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].target, "/?comp=versions");
}

#[test]
fn keep_alive_pipelining_and_bodies_are_relayed() {
    let Some(stack) = Stack::start("e2e-relay") else {
        return;
    };
    // Two pipelined requests on one client connection, answered in order.
    let pipelined = b"GET /?comp=versions HTTP/1.1\r\nHost: 168.63.129.16\r\nX-Request-Tag: p1\r\n\r\n\
                      POST /machine?comp=health HTTP/1.1\r\nHost: 168.63.129.16\r\nX-Request-Tag: p2\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    let out = stack.python(None, &raw_exchange_script(("168.63.129.16", 80), pipelined));
    let statuses: Vec<&str> = out.lines().filter(|l| l.starts_with("HTTP/1.1 ")).collect();
    assert_eq!(statuses, ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK"], "{out:?}");
    assert_eq!(
        out.matches("x-ms-azure-host-authorization: value").count(),
        2
    );
    let p2 = stack.records_tagged("p2");
    assert_eq!(p2.len(), 1);
    assert_eq!(p2[0].body_len, 5);
    assert_eq!(stack.records_tagged("p1").len(), 1);

    // A chunked upload is forwarded whole.
    let chunked = b"PUT /vmAgentLog HTTP/1.1\r\nHost: 168.63.129.16:32526\r\nX-Request-Tag: up\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
                    4\r\nwiki\r\n5;ext=1\r\npedia\r\n0\r\n\r\n";
    let out = stack.python(
        None,
        &raw_exchange_script(("168.63.129.16", 32526), chunked),
    );
    assert!(out.starts_with("HTTP/1.1 200 "), "{out:?}");
    let up = stack.records_tagged("up");
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].body_len, 9);

    // A large download arrives byte for byte (3 MiB HostGAPlugin artifact).
    let size = 3 * 1024 * 1024;
    let res = stack.curl(
        None,
        &format!("{HOSTGA}/extensionArtifact?size={size}"),
        &["x-ms-version: 2015-09-01", &tag_header("big")],
    );
    assert_eq!(res.status, 200);
    assert_eq!(res.body.len(), size);
    assert!(res
        .body
        .iter()
        .enumerate()
        .all(|(i, b)| *b == fastproxy_standin::artifact_byte(i as u64)));
    // Above the splice threshold the body moved by io_uring splice, not through user space.
    let log = stack.access_log();
    let artifact = log
        .iter()
        .find(|e| e["path"] == "/extensionArtifact")
        .expect("access-log entry");
    assert!(
        artifact["spliced_bytes"].as_u64().unwrap_or(0) > 2_000_000,
        "{artifact}"
    );
}

#[test]
fn proxy_own_connects_are_not_redirected_and_upstream_down_is_502() {
    let Some(mut stack) = Stack::start("e2e-loop") else {
        return;
    };
    // Every upstream connect of the proxy carries its mark; if the kernel redirected one, the
    // request would come back to the proxy, without a record: 421 instead of the stand-in's 200.
    let res = stack.curl(
        None,
        &format!("{WIRESERVER}/?comp=versions"),
        &[&tag_header("loop")],
    );
    assert_eq!(res.status, 200);
    assert_eq!(stack.records_tagged("loop").len(), 1);
    let log = stack.access_log();
    assert_eq!(
        log.iter().filter(|e| e["has_record"] == false).count(),
        0,
        "{log:?}"
    );

    // With the stand-in gone, the proxy answers 502 itself (and nothing loops).
    let standin_pid = stack.standin_pid;
    stack
        .sandbox
        .terminate(standin_pid, std::time::Duration::from_secs(5));
    let res = stack.curl(None, &format!("{WIRESERVER}/?comp=versions"), &[]);
    assert_eq!(res.status, 502);
    assert_eq!(res.header("connection"), Some("close"));
    assert!(
        stack.sandbox.exited(stack.proxy_pid).is_none(),
        "the proxy keeps running"
    );
}

#[test]
fn without_privileges_run_and_demo_fail_with_one_line() {
    if !is_root() {
        eprintln!("SKIPPED without_privileges: needs root to drop to nobody");
        return;
    }
    for args in [&["run", "--cgroup", "/nonexistent"][..], &["demo"][..]] {
        let mut cmd = Command::new(EXE);
        cmd.args(args);
        std::os::unix::process::CommandExt::uid(&mut cmd, NOBODY.0);
        std::os::unix::process::CommandExt::gid(&mut cmd, NOBODY.1);
        let out = cmd.output().expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{args:?} must fail without privileges"
        );
        assert_eq!(
            stderr.lines().count(),
            1,
            "{args:?}: one line, got {stderr:?}"
        );
        assert!(
            stderr.contains("CAP_"),
            "{args:?}: names the capability: {stderr:?}"
        );
    }
}

#[test]
fn disabled_endpoint_is_not_redirected_and_kernel_deny_refuses_in_the_kernel() {
    let Some(stack) = Stack::start_with("e2e-fast", &["--mode", "imds=disabled", "--kernel-deny"])
    else {
        return;
    };
    // IMDS disabled: the connect goes straight to the endpoint (no proxy headers either way).
    let imds = stack.curl(
        Some(NOBODY),
        &format!("{IMDS}/metadata/instance?api-version=2021-08-01"),
        &["Metadata: true", &tag_header("fast-imds")],
    );
    assert_eq!(imds.status, 200);
    assert_eq!(
        imds.header("x-ms-azure-host-authorization"),
        None,
        "not through the proxy"
    );
    let seen = stack.records_tagged("fast-imds");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-ms-azure-host-claims"), None);

    // Kernel deny: nobody's connect to WireServer fails with EPERM, no HTTP at all.
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "5",
        &format!("{WIRESERVER}/?comp=versions"),
    ]);
    let (_, out) = stack.sandbox.run(cmd, Some(NOBODY)).expect("curl runs");
    assert_eq!(
        out.status.code(),
        Some(7),
        "curl: couldn't connect ({})",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stack
        .records()
        .iter()
        .all(|r| r.endpoint != Endpoint::WireServer));
    assert!(
        stack
            .access_log()
            .iter()
            .all(|e| e["endpoint"] != "wireserver"),
        "refused in the kernel, so the proxy never saw it"
    );
    // Root still passes through the proxy.
    let root = stack.curl(
        None,
        &format!("{WIRESERVER}/?comp=versions"),
        &[&tag_header("fast-root")],
    );
    assert_eq!(root.status, 200);
    assert_eq!(
        stack.records_tagged("fast-root")[0].header("x-ms-azure-host-claims"),
        Some(r#"{ "isRoot": "true"}"#)
    );
}

/// Sets kernel.io_uring_disabled for the test and restores it, also on panic.
struct IoUringDisabled(String);

impl IoUringDisabled {
    const PATH: &'static str = "/proc/sys/kernel/io_uring_disabled";

    fn set(value: &str) -> Option<Self> {
        let old = std::fs::read_to_string(Self::PATH).ok()?;
        std::fs::write(Self::PATH, value).ok()?;
        Some(IoUringDisabled(old.trim().to_owned()))
    }
}

impl Drop for IoUringDisabled {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

#[test]
fn io_uring_disabled_falls_back_to_tokio_with_the_same_behaviour() {
    if !is_root() {
        eprintln!("SKIPPED io_uring fallback: needs root");
        return;
    }
    let Some(guard) = IoUringDisabled::set("2") else {
        eprintln!("SKIPPED io_uring fallback: this kernel has no kernel.io_uring_disabled");
        return;
    };
    let Some(stack) = Stack::start("e2e-nouring") else {
        return;
    };
    let log = log_with(&stack.dir.join("proxy.log"), r#""runtime":"#);
    assert!(
        log.contains(r#""runtime":"tokio""#),
        "fell back to tokio: {log}"
    );
    let root = stack.curl(
        None,
        &format!("{WIRESERVER}/machine/?comp=goalstate"),
        &[&tag_header("nu-root")],
    );
    assert_eq!(root.status, 200);
    assert_eq!(root.header("x-ms-azure-host-authorization"), Some("value"));
    let nobody = stack.curl(
        Some(NOBODY),
        &format!("{WIRESERVER}/machine/?comp=goalstate"),
        &[],
    );
    assert_eq!(nobody.status, 403);
    let big = stack.curl(
        None,
        &format!("{HOSTGA}/extensionArtifact?size=1048576"),
        &[],
    );
    assert_eq!(big.body.len(), 1_048_576);
    assert!(big
        .body
        .iter()
        .enumerate()
        .all(|(i, b)| *b == fastproxy_standin::artifact_byte(i as u64)));
    drop(stack);
    let original = guard.0.clone();
    drop(guard);
    let restored = std::fs::read_to_string(IoUringDisabled::PATH).expect("sysctl");
    assert_eq!(restored.trim(), original, "the sysctl is restored");
}

#[test]
fn connection_limits_per_uid_keep_room_for_root() {
    let args = [
        "--max-connections",
        "12",
        "--max-connections-per-uid",
        "3",
        "--root-reserved-connections",
        "4",
    ];
    let Some(stack) = Stack::start_with("e2e-limits", &args) else {
        return;
    };
    // nobody holds three idle connections; the fourth is refused with 503 while they stay open,
    // and root still gets through.
    let script = "import socket,sys,time\n\
        held=[socket.create_connection(('169.254.169.254',80)) for _ in range(3)]\n\
        time.sleep(0.3)\n\
        s=socket.create_connection(('169.254.169.254',80),timeout=5)\n\
        s.sendall(b'GET /metadata/instance?api-version=2021-08-01 HTTP/1.1\\r\\nHost: x\\r\\nMetadata: true\\r\\n\\r\\n')\n\
        print(s.recv(4096).decode('latin-1').split('\\r\\n')[0])\n\
        sys.stdout.flush()\n\
        time.sleep(1.5)\n";
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script]);
    let holder = std::thread::scope(|scope| {
        let handle = scope.spawn(|| stack.sandbox.run(cmd, Some(NOBODY)).expect("python runs"));
        std::thread::sleep(std::time::Duration::from_millis(700));
        let root = stack.curl(None, &format!("{WIRESERVER}/?comp=versions"), &[]);
        assert_eq!(root.status, 200, "root is not locked out");
        handle.join().expect("joined")
    });
    let out = String::from_utf8_lossy(&holder.1.stdout).into_owned();
    assert_eq!(out.trim(), "HTTP/1.1 503 Service Unavailable", "{out}");
    let refused = stack
        .access_log()
        .into_iter()
        .find(|e| e["status"] == 503)
        .expect("the refusal is logged");
    assert_eq!(refused["caller_uid"], NOBODY.0);
}

#[test]
fn status_json_reports_provisioning_and_summaries() {
    let Some(stack) = Stack::start_with("e2e-status", &["--status-interval", "1"]) else {
        return;
    };
    let res = stack.curl(None, &format!("{WIRESERVER}/?comp=versions"), &[]);
    assert_eq!(res.status, 200);
    let denied = stack.curl(Some(NOBODY), &format!("{WIRESERVER}/?comp=versions"), &[]);
    assert_eq!(denied.status, 403);
    let path = stack.dir.join("logs/status.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let report = loop {
        let report: Value = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let summaries = report["proxyConnectionSummary"]
            .as_array()
            .map_or(0, Vec::len);
        if summaries >= 2 {
            break report;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no summaries in status.json: {report}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let status = &report["proxyAgentStatus"];
    assert_eq!(status["status"], "SUCCESS", "{report}");
    assert_eq!(
        status["keyLatchStatus"]["states"]["secureChannelState"],
        "disabled"
    );
    let curl = report["proxyConnectionSummary"]
        .as_array()
        .expect("summaries")
        .iter()
        .find(|s| s["userName"] == "root")
        .expect("root's summary");
    assert!(
        curl["processFullPath"]
            .as_str()
            .is_some_and(|p| p.ends_with("/curl")),
        "{curl}"
    );
    assert_eq!(curl["responseStatus"], "200");
    let failed = report["failedAuthenticateSummary"]
        .as_array()
        .expect("failed");
    assert!(
        failed
            .iter()
            .any(|s| s["userName"] == "nobody" && s["responseStatus"] == "403"),
        "{report}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&path).expect("file").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}
