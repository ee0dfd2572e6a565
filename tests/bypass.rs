//! The bypass matrix: every path from a process to a guarded endpoint, each proved twice.
//! "matched": the hook sees the path (root gets through the proxy, with the claims header
//! the proxy adds; or the kernel answers EPERM, which only the program does). "closed":
//! nobody, on the same path, never reaches the endpoint directly.
//!
//! Needs root; prints one line per path. Without root each test is skipped loudly.

mod support;

use std::process::Command;

use fastproxy::demo::{azure_addresses, Sandbox, NOBODY};
use support::*;

/// A Python client for one path; prints `STATUS <code>`, `OK` or `ERRNO <name>`.
fn probe_script(kind: &str, host: &str, port: u16, tag: &str) -> String {
    format!(
        r#"
import errno, signal, socket, sys
signal.alarm(10)
kind, host, port, tag = {kind:?}, {host:?}, {port}, {tag:?}
req = ("GET /?comp=versions HTTP/1.1\r\nHost: %s\r\nX-Request-Tag: %s\r\nConnection: close\r\n\r\n" % (host, tag)).encode()
def read_status(s):
    data = b""
    while b"\r\n" not in data:
        d = s.recv(4096)
        if not d: break
        data += d
    return data.split(b"\r\n")[0].decode("latin-1")
try:
    if kind == "tcp4":
        s = socket.create_connection((host, port), timeout=5); s.sendall(req); print("STATUS", read_status(s).split()[1])
    elif kind == "tcp6-mapped":
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM); s.settimeout(5)
        s.connect(("::ffff:" + host, port)); s.sendall(req); print("STATUS", read_status(s).split()[1])
    elif kind == "tcp-fastopen":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # blocking: sendto completes the handshake
        s.sendto(req, socket.MSG_FASTOPEN, (host, port)); print("STATUS", read_status(s).split()[1])
    elif kind == "mptcp":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262); s.settimeout(5)
        s.connect((host, port)); s.sendall(req); print("STATUS", read_status(s).split()[1])
    elif kind == "udp-connect":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect((host, port)); s.send(b"x"); print("OK")
    elif kind == "udp-sendto":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b"x", (host, port)); print("OK")
    elif kind == "udp6-mapped-sendto":
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.sendto(b"x", ("::ffff:" + host, port)); print("OK")
    elif kind == "tcp4-dns":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM); s.settimeout(2)
        r = s.connect_ex((host, port)); print("OK" if r in (0, errno.ECONNREFUSED) else "ERRNO " + errno.errorcode.get(r, str(r)))
except OSError as e:
    print("ERRNO", errno.errorcode.get(e.errno, str(e.errno)) if e.errno else type(e).__name__)
"#
    )
}

fn probe(
    stack: &Stack,
    user: Option<(u32, u32)>,
    kind: &str,
    host: &str,
    port: u16,
    tag: &str,
) -> String {
    stack
        .python(user, &probe_script(kind, host, port, tag))
        .trim()
        .to_owned()
}

#[test]
fn bypass_matrix() {
    let Some(stack) = Stack::start("bypass") else {
        return;
    };
    println!("{:<22} {:<16} {:<34} closed", "path", "hook", "matched");
    let mut failures = Vec::new();

    // TCP paths: root passes through the proxy (the stand-in sees the proxy's claims header),
    // nobody is refused by the proxy (403) and the stand-in sees nothing.
    let tcp_paths = [
        ("tcp4", "cgroup/connect4"),
        ("tcp6-mapped", "cgroup/connect6"),
        ("tcp-fastopen", "cgroup/connect4"),
        ("mptcp", "cgroup/connect4"),
    ];
    for (kind, hook) in tcp_paths {
        let root_tag = format!("{kind}-root");
        let nobody_tag = format!("{kind}-nobody");
        let root = probe(&stack, None, kind, "168.63.129.16", 80, &root_tag);
        let nobody = probe(&stack, Some(NOBODY), kind, "168.63.129.16", 80, &nobody_tag);
        if kind == "mptcp" && root.starts_with("ERRNO") && root.contains("PROTONOSUPPORT") {
            println!(
                "{kind:<22} {hook:<16} {:<34} (MPTCP not enabled in this kernel)",
                "n/a"
            );
            continue;
        }
        let via_proxy = stack
            .records_tagged(&root_tag)
            .iter()
            .any(|r| r.header("x-ms-azure-host-claims") == Some(r#"{ "isRoot": "true"}"#));
        let matched = root == "STATUS 200" && via_proxy;
        let closed = nobody == "STATUS 403" && stack.records_tagged(&nobody_tag).is_empty();
        row(
            kind,
            hook,
            format!("{} (root: {root})", yes(matched)),
            format!("{} (nobody: {nobody})", yes(closed)),
        );
        if !(matched && closed) {
            failures.push(kind);
        }
    }

    // io_uring's IORING_OP_CONNECT: this test binary, re-run inside the sandbox as a probe.
    let ring = |user: Option<(u32, u32)>, tag: &str| {
        let result_file = stack.dir.join(format!("{tag}.result"));
        let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
        cmd.args(["io_uring_connect_probe", "--exact", "--test-threads", "1"])
            .env(
                "FASTPROXY_PROBE_IO_URING",
                format!("168.63.129.16:80 {tag} {}", result_file.display()),
            );
        if user.is_some() {
            // The unprivileged probe writes its result into a file it may create.
            let _ = std::fs::set_permissions(
                &stack.dir,
                std::os::unix::fs::PermissionsExt::from_mode(0o777),
            );
        }
        let (_, out) = stack.sandbox.run(cmd, user).expect("probe runs");
        std::fs::read_to_string(&result_file)
            .map(|r| r.trim().to_owned())
            .unwrap_or_else(|_| {
                format!(
                    "no result ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout).trim()
                )
            })
    };
    let root = ring(None, "uring-root");
    let nobody = ring(Some(NOBODY), "uring-nobody");
    let via_proxy = stack
        .records_tagged("uring-root")
        .iter()
        .any(|r| r.header("x-ms-azure-host-claims") == Some(r#"{ "isRoot": "true"}"#));
    let matched = root == "STATUS 200" && via_proxy;
    let closed = nobody == "STATUS 403" && stack.records_tagged("uring-nobody").is_empty();
    row(
        "io_uring connect",
        "cgroup/connect4",
        format!("{} (root: {root})", yes(matched)),
        format!("{} (nobody: {nobody})", yes(closed)),
    );
    if !(matched && closed) {
        failures.push("io_uring");
    }

    // UDP to a guarded ip:port: EPERM from the kernel (only the program answers EPERM), while
    // Azure DNS (:53) is untouched.
    let udp_paths = [
        ("udp-connect", "cgroup/connect4"),
        ("udp-sendto", "cgroup/sendmsg4"),
        ("udp6-mapped-sendto", "cgroup/sendmsg6"),
    ];
    for (kind, hook) in udp_paths {
        let guarded = probe(&stack, Some(NOBODY), kind, "168.63.129.16", 80, "-");
        let dns = probe(&stack, Some(NOBODY), kind, "168.63.129.16", 53, "-");
        let matched = guarded == "ERRNO EPERM";
        let closed = matched && dns == "OK";
        row(
            kind,
            hook,
            format!("{} (:80 {guarded})", yes(matched)),
            format!("{} (:53 {dns})", yes(closed)),
        );
        if !closed {
            failures.push(kind);
        }
    }
    let dns_tcp = probe(&stack, Some(NOBODY), "tcp4-dns", "168.63.129.16", 53, "-");
    println!(
        "{:<22} {:<16} {:<34} {}",
        "tcp4 to :53 (dns)", "cgroup/connect4", "untouched", dns_tcp
    );
    if dns_tcp != "OK" {
        failures.push("tcp4-dns");
    }

    // A process of another network namespace (a container) in the guarded cgroup.
    let foreign = Sandbox::create("bypass-ctr", &azure_addresses()).expect("second namespace");
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &probe_script("tcp4", "168.63.129.16", 80, "foreign")]);
    let (_, out) = stack
        .sandbox
        .run_foreign(&foreign, cmd, Some(NOBODY))
        .expect("python runs");
    let result = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let closed = result == "ERRNO EPERM";
    row(
        "foreign netns tcp4",
        "cgroup/connect4",
        format!("{} ({result})", yes(closed)),
        yes(closed).into(),
    );
    if !closed {
        failures.push("foreign-netns");
    }

    assert!(failures.is_empty(), "open paths: {failures:?}");
}

/// One line of the matrix: path, hook, matched, closed.
fn row(path: &str, hook: &str, matched: String, closed: String) {
    println!("{path:<22} {hook:<16} {matched:<34} {closed}");
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "NO"
    }
}

/// Not a test on its own: the bypass matrix runs this binary inside the sandbox with
/// FASTPROXY_PROBE_IO_URING set, to connect through io_uring (IORING_OP_CONNECT).
#[test]
fn io_uring_connect_probe() {
    let Ok(spec) = std::env::var("FASTPROXY_PROBE_IO_URING") else {
        return;
    };
    let mut parts = spec.split(' ');
    let (Some(addr), Some(tag), Some(result_file)) = (parts.next(), parts.next(), parts.next())
    else {
        panic!("FASTPROXY_PROBE_IO_URING is ADDR TAG RESULT_FILE");
    };
    let addr: std::net::SocketAddr = addr.parse().expect("address");
    let request = format!("GET /?comp=versions HTTP/1.1\r\nHost: {}\r\nX-Request-Tag: {tag}\r\nConnection: close\r\n\r\n", addr.ip());
    let result = tokio_uring::start(async move {
        let stream = match tokio_uring::net::TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(e) => return format!("ERRNO {e}"),
        };
        let (res, _) = stream.write_all(request.into_bytes()).await;
        if let Err(e) = res {
            return format!("ERRNO {e}");
        }
        let (res, buf) = stream.read(vec![0u8; 4096]).await;
        match res {
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let code = text.split_whitespace().nth(1).unwrap_or("?").to_owned();
                format!("STATUS {code}")
            }
            Err(e) => format!("ERRNO {e}"),
        }
    });
    std::fs::write(result_file, result).expect("writing the probe result");
}
