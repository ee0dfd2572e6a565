//! The `fastproxy-standin` binary: ready file once bound, recording, clean exit on SIGTERM.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn binary_writes_ready_file_records_and_exits_on_sigterm() {
    let probes: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("probe"))
        .collect();
    let addrs: Vec<String> = probes
        .iter()
        .map(|l| l.local_addr().expect("addr").to_string())
        .collect();
    drop(probes);
    let dir = std::env::temp_dir().join(format!("standin-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ready = dir.join("ready");
    let record = dir.join("record.jsonl");

    let mut child = Command::new(env!("CARGO_BIN_EXE_fastproxy-standin"))
        .args([
            "--wireserver",
            &addrs[0],
            "--hostga",
            &addrs[1],
            "--imds",
            &addrs[2],
        ])
        .arg("--record")
        .arg(&record)
        .arg("--ready-file")
        .arg(&ready)
        .spawn()
        .expect("start the binary");
    let start = Instant::now();
    while !ready.exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "never ready");
        std::thread::sleep(Duration::from_millis(10));
    }

    let mut stream = TcpStream::connect(&addrs[0]).expect("connect");
    stream
        .write_all(b"GET /?comp=versions HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("reply");
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(reply.contains("2012-11-30"));

    let records = fastproxy_standin::read_records(&record).expect("records");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].target, "/?comp=versions");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = child.wait().expect("wait");
    assert!(exit.success(), "{exit:?}");
    assert!(!ready.exists(), "ready file removed on exit");
    let _ = std::fs::remove_dir_all(&dir);
}
