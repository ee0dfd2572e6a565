//! Shared harness of the privileged tests: the stand-ins and the proxy in a sandbox.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use fastproxy::demo::{azure_addresses, curl, start_stack_with, CurlResult, Sandbox};
pub use fastproxy::sys::is_root;
use fastproxy_standin::{read_records, RecordedRequest};
use serde_json::Value;

pub const EXE: &str = env!("CARGO_BIN_EXE_fastproxy");
pub const WIRESERVER: &str = "http://168.63.129.16";
pub const HOSTGA: &str = "http://168.63.129.16:32526";
pub const IMDS: &str = "http://169.254.169.254";

/// The stand-ins and the proxy running in a sandbox of their own.
pub struct Stack {
    pub sandbox: Sandbox,
    pub dir: PathBuf,
    pub standin_pid: u32,
    pub proxy_pid: u32,
}

impl Stack {
    pub fn start(tag: &str) -> Option<Stack> {
        Self::start_with(tag, &[])
    }

    /// Like `start`, with extra `fastproxy run` arguments.
    pub fn start_with(tag: &str, proxy_args: &[&str]) -> Option<Stack> {
        Self::start_full(tag, &[], proxy_args)
    }

    /// Like `start`, with extra arguments for the stand-in and for `fastproxy run`; the
    /// stand-in's arguments may name `{dir}`, the test's directory.
    pub fn start_full(tag: &str, standin_args: &[&str], proxy_args: &[&str]) -> Option<Stack> {
        if !is_root() {
            eprintln!(
                "SKIPPED {tag}: needs root (eBPF, network namespaces, cgroups); CI runs it as root"
            );
            return None;
        }
        let mut sandbox = Sandbox::create(tag, &azure_addresses()).expect("sandbox");
        let dir = std::env::temp_dir().join(format!("fastproxy-test-{}", sandbox.name()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let standin_args: Vec<String> = standin_args
            .iter()
            .map(|a| a.replace("{dir}", &dir.display().to_string()))
            .collect();
        let standin_args: Vec<&str> = standin_args.iter().map(String::as_str).collect();
        let (standin_pid, proxy_pid) = start_stack_with(
            &mut sandbox,
            Path::new(EXE),
            &dir,
            &standin_args,
            &[&["--workers", "2"], proxy_args].concat(),
        )
        .expect("stack starts");
        Some(Stack {
            sandbox,
            dir,
            standin_pid,
            proxy_pid,
        })
    }

    pub fn curl(&self, user: Option<(u32, u32)>, url: &str, headers: &[&str]) -> CurlResult {
        curl(&self.sandbox, user, url, headers).expect("curl runs")
    }

    pub fn records(&self) -> Vec<RecordedRequest> {
        read_records(&self.dir.join("records.jsonl")).expect("records")
    }

    pub fn records_tagged(&self, tag: &str) -> Vec<RecordedRequest> {
        self.records()
            .into_iter()
            .filter(|r| r.header("x-request-tag") == Some(tag))
            .collect()
    }

    /// The proxy's access-log events (JSON lines with the access target). The proxy writes
    /// its log from a background thread, so this waits until the file stops growing.
    pub fn access_log(&self) -> Vec<Value> {
        let path = self.dir.join("proxy.log");
        let mut text = std::fs::read_to_string(&path).expect("proxy log");
        for _ in 0..40 {
            std::thread::sleep(std::time::Duration::from_millis(25));
            let again = std::fs::read_to_string(&path).expect("proxy log");
            if again == text {
                break;
            }
            text = again;
        }
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "fastproxy::access")
            .collect()
    }

    /// Run a Python snippet inside the sandbox (raw sockets for what curl will not send).
    pub fn python(&self, user: Option<(u32, u32)>, script: &str) -> String {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", script]);
        let (_, out) = self.sandbox.run(cmd, user).expect("python3 runs");
        assert!(
            out.status.success(),
            "python failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("test files kept in {}", self.dir.display());
        }
    }
}

pub fn tag_header(tag: &str) -> String {
    format!("X-Request-Tag: {tag}")
}

/// Send raw bytes to `addr` from inside the sandbox and return everything read back until
/// the proxy closes (or 5 s pass).
pub fn raw_exchange_script(addr: (&str, u16), payload: &[u8]) -> String {
    let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "import socket,sys\n\
         s=socket.create_connection(('{}',{}),timeout=5)\n\
         s.sendall(bytes.fromhex('{hex}'))\n\
         out=b''\n\
         try:\n\
         \x20   while True:\n\
         \x20       d=s.recv(65536)\n\
         \x20       if not d: break\n\
         \x20       out+=d\n\
         except Exception: pass\n\
         sys.stdout.write(out.decode('latin-1'))\n",
        addr.0, addr.1
    )
}

/// The text of a log file once it contains `needle` (the proxy writes its log from a
/// background thread), or whatever it holds after 3 s.
pub fn log_with(path: &Path, needle: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) || std::time::Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Entries in a pinned BPF map, from `bpftool -j map dump` (JSON: one array element per entry).
pub fn map_entries(pin: &Path) -> usize {
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(pin)
        .output()
        .expect("bpftool runs");
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    entries.as_array().expect("an array of entries").len()
}
