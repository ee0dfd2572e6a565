//! Fail-closed life cycle: the redirect is pinned, so while the proxy is down (killed,
//! restarting, being replaced) no connect reaches an endpoint unguarded; a restart adopts the
//! pins; program replacement is atomic; `detach` is the break-glass. Needs root.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use fastproxy::demo::start_proxy;
use support::*;

/// A root client that keeps calling WireServer through the redirect for `seconds`, one
/// connection per request, printing `<boottime> ok|refused|<error>` per attempt.
fn client_loop(seconds: f64, tag: &str) -> String {
    format!(
        r#"
import socket, time
end = time.clock_gettime(time.CLOCK_BOOTTIME) + {seconds}
n = 0
while time.clock_gettime(time.CLOCK_BOOTTIME) < end:
    n += 1
    t = time.clock_gettime(time.CLOCK_BOOTTIME)
    try:
        s = socket.create_connection(("168.63.129.16", 80), timeout=2)
        s.sendall(("GET /?comp=versions HTTP/1.1\r\nHost: 168.63.129.16\r\nX-Request-Tag: {tag}-%d\r\nConnection: close\r\n\r\n" % n).encode())
        data = s.recv(64)
        s.close()
        print(t, "ok" if data.startswith(b"HTTP/1.1 200") else "bad:" + data[:20].decode("latin-1"), flush=True)
    except ConnectionRefusedError:
        print(t, "refused", flush=True)
    except Exception as e:
        print(t, "error:" + type(e).__name__, flush=True)
    time.sleep(0.005)
"#
    )
}

fn boottime() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn start_client(stack: &mut Stack, seconds: f64, tag: &str) -> (u32, std::path::PathBuf) {
    let out = stack.dir.join(format!("{tag}.client"));
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &client_loop(seconds, tag)])
        .stdout(std::fs::File::create(&out).expect("client log"))
        .stderr(Stdio::null());
    let pid = stack.sandbox.spawn(cmd, None).expect("client starts");
    (pid, out)
}

fn wait_exit(stack: &mut Stack, pid: u32, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    while stack.sandbox.exited(pid).is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "process {pid} did not finish"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn attempts(path: &Path) -> Vec<(f64, String)> {
    std::fs::read_to_string(path)
        .expect("client output")
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(t, r)| Some((t.parse().ok()?, r.to_owned())))
        .collect()
}

/// Requests that reached the stand-in without the proxy's claims header went direct.
fn direct_requests(stack: &Stack) -> usize {
    stack
        .records()
        .iter()
        .filter(|r| r.header("x-ms-azure-host-claims").is_none())
        .count()
}

#[test]
fn killed_proxy_fails_closed_and_restart_resumes_within_a_second() {
    let Some(mut stack) = Stack::start("life-kill") else {
        return;
    };
    let (client, out) = start_client(&mut stack, 4.0, "kill");
    std::thread::sleep(Duration::from_millis(1000));
    stack.sandbox.kill(stack.proxy_pid);
    let killed_at = boottime();
    std::thread::sleep(Duration::from_millis(700));
    let exe = Path::new(EXE);
    let dir = stack.dir.clone();
    let restarted =
        start_proxy(&mut stack.sandbox, exe, &dir, "proxy2", &["--workers", "2"]).expect("restart");
    let ready_at = boottime();
    stack.proxy_pid = restarted;
    wait_exit(&mut stack, client, Duration::from_secs(15));

    let log = attempts(&out);
    let ok_before = log
        .iter()
        .filter(|(t, r)| *t < killed_at && r == "ok")
        .count();
    let refused = log.iter().filter(|(_, r)| r == "refused").count();
    let first_ok_after = log
        .iter()
        .filter(|(t, r)| *t > ready_at - 0.05 && r == "ok")
        .map(|(t, _)| t - ready_at)
        .next();
    let direct = direct_requests(&stack);
    let other: Vec<_> = log
        .iter()
        .filter(|(_, r)| r != "ok" && r != "refused")
        .collect();
    println!(
        "kill/restart: {} attempts, {ok_before} ok before the kill, {refused} refused while down, \
         first ok {:.3} s after the restart, {direct} direct connections, other outcomes {other:?}",
        log.len(),
        first_ok_after.unwrap_or(f64::NAN)
    );
    assert!(ok_before > 0, "the client worked before the kill");
    assert!(
        refused > 0,
        "while the proxy was down, connects were refused"
    );
    assert_eq!(direct, 0, "no connection may reach the endpoint directly");
    let resumed = first_ok_after.expect("service resumed after the restart");
    assert!(
        resumed < 1.0,
        "service resumed {resumed:.3} s after the restart"
    );
    let log2 = log_with(&stack.dir.join("proxy2.log"), "Replaced");
    assert!(
        log2.contains("Replaced"),
        "the restarted proxy adopted the pinned links: {log2}"
    );
}

#[test]
fn hundred_program_replacements_under_load_leak_nothing() {
    let Some(mut stack) = Stack::start("life-replace") else {
        return;
    };
    let (client, out) = start_client(&mut stack, 600.0, "replace");
    let mut replaced = 0;
    for _ in 0..100 {
        let mut cmd = Command::new(EXE);
        cmd.arg("attach")
            .arg("--cgroup")
            .arg(stack.sandbox.cgroup())
            .arg("--bpffs-dir")
            .arg(stack.sandbox.pin_dir());
        let (_, result) = stack.sandbox.run(cmd, None).expect("attach runs");
        let text = String::from_utf8_lossy(&result.stdout);
        assert!(
            result.status.success(),
            "{}",
            String::from_utf8_lossy(&result.stderr)
        );
        if text.contains("programs replaced") {
            replaced += 1;
        }
    }
    stack.sandbox.kill(client);
    let log = attempts(&out);
    let ok = log.iter().filter(|(_, r)| r == "ok").count();
    let failed: Vec<_> = log.iter().filter(|(_, r)| r != "ok").collect();
    let direct = direct_requests(&stack);
    println!(
        "replace under load: {replaced} replacements, {} requests, {ok} ok, {} failed, {direct} direct",
        log.len(),
        failed.len()
    );
    assert_eq!(replaced, 100);
    assert!(ok > 100, "the load ran through the replacements ({ok} ok)");
    assert!(
        failed.is_empty(),
        "requests failed during replacement: {failed:?}"
    );
    assert_eq!(direct, 0);
}

#[test]
fn detach_is_the_break_glass() {
    let Some(mut stack) = Stack::start("life-detach") else {
        return;
    };
    let through = stack.curl(
        None,
        &format!("{WIRESERVER}/?comp=versions"),
        &[&tag_header("before")],
    );
    assert_eq!(through.status, 200);
    let mut cmd = Command::new(EXE);
    cmd.arg("detach")
        .arg("--bpffs-dir")
        .arg(stack.sandbox.pin_dir());
    let (_, out) = stack.sandbox.run(cmd, None).expect("detach runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("removed"),
        "pins removed"
    );
    // The running proxy still holds its map fds but no link: the kernel detached the programs.
    stack.sandbox.kill(stack.proxy_pid);
    let direct = stack.curl(
        None,
        &format!("{WIRESERVER}/?comp=versions"),
        &[&tag_header("after")],
    );
    assert_eq!(direct.status, 200);
    assert_eq!(
        direct.header("x-ms-azure-host-authorization"),
        None,
        "went direct"
    );
    let seen = stack.records_tagged("after");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-ms-azure-host-claims"), None);
}

#[test]
fn bad_environment_is_one_clear_line_and_attaches_nothing() {
    let Some(stack) = Stack::start("life-env") else {
        return;
    };
    let not_bpffs = stack.dir.join("plain/fastproxy");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "run".into(),
                "--cgroup".into(),
                stack.sandbox.cgroup().display().to_string(),
                "--bpffs-dir".into(),
                not_bpffs.display().to_string(),
            ],
            "not on a bpf file system",
        ),
        (
            vec![
                "run".into(),
                "--cgroup".into(),
                stack.dir.display().to_string(),
                "--bpffs-dir".into(),
                stack.sandbox.pin_dir().join("other").display().to_string(),
            ],
            "not a cgroup v2 directory",
        ),
    ];
    for (args, want) in cases {
        let out = Command::new(EXE).args(&args).output().expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
    // A machine without a cgroup2 mount, and a kernel without BTF, simulated in a private
    // mount namespace (the unmount and the bind mount never leave it). The shell stops before
    // fastproxy runs if the simulation could not be set up.
    let exe = EXE;
    let pins = stack.sandbox.pin_dir().join("other");
    let cgroup = stack.sandbox.cgroup().display().to_string();
    let simulations = [
        (
            format!(
                "for m in $(awk '$9==\"cgroup2\"{{print $5}}' /proc/self/mountinfo); do umount -l \"$m\" || exit 99; done; \
                 exec {exe} run --bpffs-dir {}",
                pins.display()
            ),
            "no cgroup2 file system is mounted",
        ),
        (
            format!(
                "mount --bind /dev/null /sys/kernel/btf/vmlinux || exit 99; exec {exe} run --cgroup {cgroup} --bpffs-dir {}",
                pins.display()
            ),
            "the kernel has no BTF",
        ),
    ];
    for (script, want) in simulations {
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .output()
            .expect("unshare runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(
            out.status.code(),
            Some(99),
            "simulation not set up: {stderr}"
        );
        assert!(!out.status.success());
        assert_eq!(stderr.lines().count(), 1, "{want}: {stderr}");
        assert!(stderr.contains(want), "{want}: {stderr}");
    }
    assert!(!not_bpffs.exists(), "nothing was created");
    assert!(
        !stack.sandbox.pin_dir().join("other").exists(),
        "nothing was pinned"
    );
}
