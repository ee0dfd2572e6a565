//! Identity under attack: a flood of redirected connects by an unprivileged user must not make
//! a root connection lose or swap its caller record, and the hand-off tables must not leak.
//! Needs root.

mod support;

use std::process::{Command, Stdio};

use std::time::Duration;

use fastproxy::demo::NOBODY;
use support::*;

/// Open `n` non-blocking connects to WireServer as fast as possible and hold them for
/// `hold` seconds (the proxy accepts them and waits for heads that never come).
fn flood_script(n: usize, hold: f64) -> String {
    format!(
        r#"
import resource, socket, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
socks = []
for i in range({n}):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect(("168.63.129.16", 80))
    except BlockingIOError:
        pass
    except OSError:
        s.close(); continue
    socks.append(s)
print("opened", len(socks), flush=True)
time.sleep({hold})
"#
    )
}

#[test]
fn unprivileged_flood_cannot_steal_or_evict_a_root_record() {
    let Some(mut stack) = Stack::start("id-flood") else {
        return;
    };
    let out = stack.dir.join("flood.out");
    let mut flood = Command::new("python3");
    flood
        .args(["-c", &flood_script(10_000, 6.0)])
        .stdout(std::fs::File::create(&out).expect("flood log"))
        .stderr(Stdio::null());
    let flood_pid = stack
        .sandbox
        .spawn(flood, Some(NOBODY))
        .expect("flood starts");

    // Root calls while the flood is being opened and held.
    let mut root_pids = Vec::new();
    for i in 0..30 {
        let tag = tag_header(&format!("root-{i}"));
        let res = stack.curl(None, &format!("{WIRESERVER}/?comp=versions"), &[&tag]);
        assert_eq!(res.status, 200, "root request {i} during the flood");
        root_pids.push(res.pid);
        std::thread::sleep(Duration::from_millis(100));
    }
    let opened = std::fs::read_to_string(&out).unwrap_or_default();
    println!("flood: {}", opened.trim());
    assert!(
        opened.contains("opened 10000"),
        "the flood opened its 10,000 connects: {opened:?}"
    );

    // Every root request was attributed to its own curl process, as root.
    let log = stack.access_log();
    for pid in &root_pids {
        let entry = log
            .iter()
            .find(|e| e["caller_pid"] == *pid)
            .unwrap_or_else(|| panic!("no access-log entry for root curl {pid}"));
        assert_eq!(entry["caller_uid"], 0, "{entry}");
        assert_eq!(entry["status"], 200, "{entry}");
    }
    // No request of the flood was attributed to root, and none reached WireServer.
    assert!(stack
        .records()
        .iter()
        .all(|r| r.header("x-ms-azure-host-claims") == Some(r#"{ "isRoot": "true"}"#)));

    stack.sandbox.kill(flood_pid);
    std::thread::sleep(Duration::from_millis(500));
    let pins = stack.sandbox.pin_dir();
    let (left, left_root) = (
        map_entries(&pins.join("fp_handoff")),
        map_entries(&pins.join("fp_handoff_root")),
    );
    println!("hand-off entries after the flood: {left} (root table: {left_root})");
    assert_eq!((left, left_root), (0, 0), "the hand-off tables leak");
}
