//! The secure channel end to end: the stand-in WireServer is cycled through disabled ->
//! wireserver -> wireserverandimds -> a key rotation -> disabled while a client keeps one
//! keep-alive connection open. Each phase shows the expected redirect set in the kernel, the
//! state text in the proxy's log, signatures the stand-in accepts, and the connection
//! survives the rotation. Needs root.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fastproxy_standin::SignatureCheck;
use support::*;

/// Guarded ip:port entries in the kernel's endpoint table (not counting the proxy's own
/// address, which is always there so that direct callers are identified).
fn redirected(pins: &Path) -> usize {
    map_entries(&pins.join("fp_endpoints")) - 1
}

/// Wait until `check` holds (the keeper polls every second), up to 10 s.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn set_state(control: &Path, state: &str, rotate: u32) {
    let text = format!(
        r#"{{"state": "{state}", "rotate": {}, "n": {rotate}}}"#,
        rotate > 0
    );
    let tmp = control.with_extension("tmp");
    std::fs::write(&tmp, text).expect("control");
    std::fs::rename(&tmp, control).expect("control");
}

fn log_has(stack: &Stack, needle: &str) -> bool {
    std::fs::read_to_string(stack.dir.join("proxy.log"))
        .unwrap_or_default()
        .contains(needle)
}

/// A root client holding one keep-alive connection to WireServer: for each `go-N` file it
/// sends one request tagged `ka-N` and writes the status line to `done-N`.
fn keep_alive_client(dir: &Path) -> String {
    format!(
        "import os,socket,time\n\
         d='{}'\n\
         s=socket.create_connection(('168.63.129.16',80),timeout=10)\n\
         n=0\n\
         while n < 10:\n\
         \x20   go=os.path.join(d,'go-%d'%n)\n\
         \x20   if not os.path.exists(go):\n\
         \x20       time.sleep(0.05); continue\n\
         \x20   s.sendall(('GET /?comp=versions HTTP/1.1\\r\\nHost: 168.63.129.16\\r\\nX-Request-Tag: ka-%d\\r\\n\\r\\n'%n).encode())\n\
         \x20   data=b''\n\
         \x20   while b'\\r\\n\\r\\n' not in data:\n\
         \x20       c=s.recv(65536)\n\
         \x20       if not c: break\n\
         \x20       data+=c\n\
         \x20   head,_,body=data.partition(b'\\r\\n\\r\\n')\n\
         \x20   length=[int(l.split(b':')[1]) for l in head.split(b'\\r\\n') if l.lower().startswith(b'content-length')]\n\
         \x20   while length and len(body) < length[0]:\n\
         \x20       body+=s.recv(65536)\n\
         \x20   open(os.path.join(d,'done-%d'%n),'w').write(head.split(b'\\r\\n')[0].decode())\n\
         \x20   n+=1\n",
        dir.display()
    )
}

#[test]
fn secure_channel_cycle() {
    let Some(mut stack) = Stack::start_full(
        "secure-channel",
        &["--control", "{dir}/control.json"],
        &[
            "--secure-channel",
            "on",
            "--secure-channel-poll",
            "1",
            "--status-interval",
            "1",
        ],
    ) else {
        return;
    };
    let dir = stack.dir.clone();
    let reported_state = |dir: &Path| -> String {
        std::fs::read(dir.join("logs/status.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| {
                v["proxyAgentStatus"]["keyLatchStatus"]["states"]["secureChannelState"]
                    .as_str()
                    .map(str::to_owned)
            })
            .unwrap_or_default()
    };
    let control = dir.join("control.json");
    let pins = stack.sandbox.pin_dir();
    // Phase 1: disabled. The status turns every endpoint's mode to disabled: nothing is
    // redirected any more, and requests go direct, unsigned.
    eventually("state disabled", || {
        log_has(&stack, r#""state":"disabled""#)
    });
    eventually("empty redirect set", || redirected(&pins) == 0);
    let direct = stack.curl(
        None,
        &format!("{WIRESERVER}/?comp=versions"),
        &[&tag_header("p1")],
    );
    assert_eq!(direct.status, 200);
    assert_eq!(
        direct.header("x-ms-azure-host-authorization"),
        None,
        "went direct"
    );

    // Phase 2: wireserver. A key is latched; WireServer and HostGAPlugin are enforced, IMDS
    // audited: all three redirected, and the stand-in accepts the proxy's signatures.
    set_state(&control, "wireserver", 0);
    eventually("state wireserver", || {
        log_has(&stack, "WireServer Enforce -  IMDS Audit - HostGA Enforce")
    });
    eventually("key latched", || log_has(&stack, "key latched"));
    eventually("the state text in status.json", || {
        reported_state(&dir) == "WireServer Enforce -  IMDS Audit - HostGA Enforce"
    });
    eventually("three redirected endpoints", || redirected(&pins) == 3);
    // From now on one client keeps one keep-alive connection through the proxy (a connection
    // made while nothing was redirected would stay direct: the kernel acts at connect time).
    let mut ka = Command::new("python3");
    ka.args(["-c", &keep_alive_client(&dir)])
        .stdout(Stdio::null());
    stack.sandbox.spawn(ka, None).expect("keep-alive client");
    let mut step = 0;
    let mut keep_alive = |phase: &str| {
        std::fs::write(dir.join(format!("go-{step}")), "").expect("go");
        let done = dir.join(format!("done-{step}"));
        eventually(&format!("keep-alive request in {phase}"), || done.exists());
        let line = std::fs::read_to_string(&done).expect("done");
        assert_eq!(line, "HTTP/1.1 200 OK", "keep-alive request in {phase}");
        step += 1;
    };
    keep_alive("wireserver");
    let signed = stack.curl(
        None,
        &format!("{WIRESERVER}/machine/?comp=goalstate"),
        &[&tag_header("p2")],
    );
    assert_eq!(signed.status, 200);
    let seen = stack.records_tagged("p2");
    assert_eq!(seen[0].signature, Some(SignatureCheck::Valid), "{seen:?}");
    assert!(
        seen[0].header("x-ms-azure-host-date").is_some(),
        "the host date goes upstream"
    );
    let keys: Vec<_> = std::fs::read_dir(dir.join("keys"))
        .expect("keys dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".key"))
        .collect();
    assert_eq!(keys.len(), 1, "the latched key is stored: {keys:?}");

    // Phase 3: wireserverandimds. IMDS is signed too.
    set_state(&control, "wireserverandimds", 0);
    eventually("state wireserverandimds", || {
        log_has(
            &stack,
            "WireServer Enforce -  IMDS Enforce - HostGA Enforce",
        )
    });
    keep_alive("wireserverandimds");
    let imds = stack.curl(
        None,
        &format!("{IMDS}/metadata/instance?api-version=2021-08-01"),
        &["Metadata: true", &tag_header("p3")],
    );
    assert_eq!(imds.status, 200);
    assert_eq!(
        stack.records_tagged("p3")[0].signature,
        Some(SignatureCheck::Valid)
    );

    // Phase 4: rotation. A new guid: a new key is latched without dropping the keep-alive
    // connection.
    let latched_before = std::fs::read_to_string(stack.dir.join("proxy.log"))
        .unwrap_or_default()
        .matches("key latched")
        .count();
    set_state(&control, "wireserverandimds", 1);
    eventually("a second key latched", || {
        std::fs::read_to_string(stack.dir.join("proxy.log"))
            .unwrap_or_default()
            .matches("key latched")
            .count()
            > latched_before
    });
    keep_alive("after rotation");
    let rotated = stack.curl(
        None,
        &format!("{WIRESERVER}/machine/?comp=goalstate"),
        &[&tag_header("p4")],
    );
    assert_eq!(rotated.status, 200);
    assert_eq!(
        stack.records_tagged("p4")[0].signature,
        Some(SignatureCheck::Valid)
    );

    // Phase 5: disabled again: nothing redirected, the key unlatched.
    set_state(&control, "disabled", 0);
    eventually("unlatched", || log_has(&stack, "requests go unsigned"));
    eventually("empty redirect set again", || redirected(&pins) == 0);
    eventually("disabled in status.json", || {
        reported_state(&dir) == "disabled"
    });
    keep_alive("disabled again");
    let keep_alive_records: Vec<_> = stack
        .records()
        .into_iter()
        .filter(|r| {
            r.header("x-request-tag")
                .is_some_and(|t| t.starts_with("ka-"))
        })
        .collect();
    assert_eq!(keep_alive_records.len(), 4);
    let peers: std::collections::BTreeSet<_> =
        keep_alive_records.iter().map(|r| r.peer.clone()).collect();
    println!(
        "secure channel cycle: 4 keep-alive requests through the proxy on one client connection, \
         upstream peers {peers:?}, signatures {:?}",
        keep_alive_records
            .iter()
            .map(|r| r.signature)
            .collect::<Vec<_>>()
    );
    assert!(
        keep_alive_records[..3]
            .iter()
            .all(|r| r.signature == Some(SignatureCheck::Valid)),
        "signed while the channel was on"
    );
}

/// `fastproxy status --wait` and the Guest Proxy Agent's name for it, as cloud-init runs it:
/// 0 when provisioning finished, 1 while it has not, 2 when it finished with an error.
#[test]
fn status_wait_exit_codes() {
    // Secure channel on, but WireServer unreachable: never ready; finished with an error
    // after the provisioning time-out.
    let Some(stack) = Stack::start_with(
        "status-codes",
        &[
            "--secure-channel",
            "on",
            "--endpoint",
            "wireserver=127.0.0.2:1",
            "--provision-timeout",
            "3",
        ],
    ) else {
        return;
    };
    let gpa = stack.dir.join("azure-proxy-agent");
    std::os::unix::fs::symlink(EXE, &gpa).expect("symlink");
    let run = |program: &Path, args: &[&str]| -> (i32, String) {
        let mut cmd = Command::new(program);
        cmd.args(args);
        let (_, out) = stack.sandbox.run(cmd, None).expect("runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        )
    };
    let (code, text) = run(&gpa, &["--status", "--wait", "1"]);
    assert_eq!(code, 1, "not finished: {text}");
    std::thread::sleep(Duration::from_secs(3));
    let (code, text) = run(Path::new(EXE), &["status", "--wait", "5"]);
    assert_eq!(code, 2, "finished with an error: {text}");
    assert!(text.contains("not ready after 3s"), "{text}");
    let tag = std::fs::read_to_string(stack.dir.join("keys/status.tag")).expect("status.tag");
    assert!(tag.contains("secure channel key"), "{tag}");
    drop(stack);

    // A proxy with the channel off is ready at once.
    let Some(ready) = Stack::start("status-ready") else {
        return;
    };
    let gpa = ready.dir.join("azure-proxy-agent");
    std::os::unix::fs::symlink(EXE, &gpa).expect("symlink");
    let mut cmd = Command::new(&gpa);
    cmd.args(["--status", "--wait", "5"]);
    let (_, out) = ready.sandbox.run(cmd, None).expect("runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        std::fs::read_to_string(ready.dir.join("keys/status.tag")).expect("tag"),
        ""
    );
}

/// Telemetry: connection summaries reach WireServer as XML batches; while WireServer is down
/// they wait in a bounded spool.
#[test]
fn telemetry_reaches_wireserver_and_spools_while_it_is_down() {
    let Some(mut stack) = Stack::start_with(
        "telemetry",
        &["--telemetry", "on", "--telemetry-period", "1"],
    ) else {
        return;
    };
    assert_eq!(
        stack
            .curl(None, &format!("{WIRESERVER}/?comp=versions"), &[])
            .status,
        200
    );
    eventually("a telemetry batch at WireServer", || {
        stack.records().iter().any(|r| {
            r.method == "POST"
                && r.target == "/machine/?comp=telemetrydata"
                && r.body_len > 0
                && r.header("content-type") == Some("text/xml; charset=utf-8")
        })
    });
    // WireServer gone: new summaries are spooled, not lost.
    stack
        .sandbox
        .terminate(stack.standin_pid, Duration::from_secs(5));
    let imds = stack.curl(
        Some(fastproxy::demo::NOBODY),
        &format!("{HOSTGA}/versions"),
        &[],
    );
    assert_eq!(imds.status, 403);
    let log = log_with(&stack.dir.join("proxy.log"), "telemetry not delivered");
    assert!(
        log.contains("telemetry not delivered"),
        "the failure is reported"
    );
    let spool = stack.dir.join("logs/telemetry-spool");
    let spooled = std::fs::read_dir(&spool).map(|d| d.count()).unwrap_or(0);
    assert!(spooled > 0, "the undelivered batch waits in the spool");
}

/// Bad input from WireServer: a status that is not JSON, a key that is not 64 hex digits, an
/// attestation refused. Each is a clear message and a retry; no crash, and no key is latched
/// (an unattested key does not stay stored either).
#[test]
fn keeper_survives_bad_wireserver_answers() {
    for (mode, message) in [
        ("notjson", "not JSON"),
        ("badkey", "unusable key"),
        ("refuse-attest", "key attestation"),
    ] {
        let Some(mut stack) = Stack::start_with(
            &format!("keeper-{mode}"),
            &[
                "--secure-channel",
                "on",
                "--endpoint",
                "wireserver=127.0.0.5:8080",
            ],
        ) else {
            return;
        };
        let log = stack.dir.join("wire.jsonl");
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/support/fault_server.py"
        );
        let mut server = Command::new("python3");
        server
            .arg(script)
            .arg("127.0.0.5")
            .arg("8080")
            .arg(&log)
            .arg(mode);
        stack.sandbox.spawn(server, None).expect("fake WireServer");
        let text = log_with(&stack.dir.join("proxy.log"), message);
        assert!(
            text.contains(message),
            "{mode}: the failure is reported as {message:?}"
        );
        // It keeps retrying (1 s while the state is unknown, then every poll).
        std::thread::sleep(Duration::from_millis(2500));
        let polls = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("/secure-channel/status")
            .count();
        assert!(polls >= 2, "{mode}: retried ({polls} status polls)");
        assert!(!log_has(&stack, "key latched"), "{mode}: no key latched");
        let stored = std::fs::read_dir(stack.dir.join("keys"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".key"))
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(stored, 0, "{mode}: no key stored");
        assert!(
            stack.sandbox.exited(stack.proxy_pid).is_none(),
            "{mode}: the proxy keeps running"
        );
        // Requests still flow (unsigned: there is no key).
        assert_eq!(
            stack
                .curl(
                    None,
                    &format!("{IMDS}/metadata/versions"),
                    &["Metadata: true"]
                )
                .status,
            200
        );
    }
}

/// A v2.0 status: modes and rules come from `authorizationRules`.
#[test]
fn v2_status_modes_and_rules() {
    let Some(stack) = Stack::start_full(
        "secure-channel-v2",
        &[
            "--secure-channel",
            "wireserverandimds",
            "--status-version",
            "2.0",
        ],
        &["--secure-channel", "on", "--secure-channel-poll", "1"],
    ) else {
        return;
    };
    eventually("v2.0 state", || {
        log_has(
            &stack,
            "WireServer Enforce -  IMDS Enforce - HostGA Enforce",
        )
    });
    eventually("key latched", || log_has(&stack, "key latched"));
    eventually("rules from the status loaded", || {
        log_has(&stack, r#""advanced_rules":true"#)
    });
    let imds = stack.curl(
        None,
        &format!("{IMDS}/metadata/instance?api-version=2021-08-01"),
        &["Metadata: true", &tag_header("v2")],
    );
    assert_eq!(imds.status, 200);
    assert_eq!(
        stack.records_tagged("v2")[0].signature,
        Some(SignatureCheck::Valid)
    );
}
