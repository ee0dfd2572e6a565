//! Fault tests: a misbehaving upstream (tests/support/fault_server.py) and misbehaving
//! clients. The client never takes a truncated response for a complete one, an upstream never
//! sees half a request as a whole one, and every failure has its status. Needs root.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const FAULTY: (&str, u16) = ("127.0.0.5", 8080);
const REFUSING: &str = "127.0.0.6:9";
const BLACKHOLE: (&str, u16) = ("127.0.0.7", 8081);

struct Faults {
    stack: Stack,
    log: PathBuf,
}

impl Faults {
    fn start(tag: &str) -> Option<Faults> {
        let imds = format!("imds={}:{}", FAULTY.0, FAULTY.1);
        let hostga = format!("hostga={REFUSING}");
        let ws = format!("wireserver={}:{}", BLACKHOLE.0, BLACKHOLE.1);
        let args = [
            "--endpoint",
            &imds,
            "--endpoint",
            &hostga,
            "--endpoint",
            &ws,
            "--upstream-head-timeout",
            "2",
            "--upstream-connect-timeout",
            "1",
        ];
        let mut stack = Stack::start_with(tag, &args)?;
        let log = stack.dir.join("faults.jsonl");
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/support/fault_server.py"
        );
        let mut server = Command::new("python3");
        server
            .arg(script)
            .arg(FAULTY.0)
            .arg(FAULTY.1.to_string())
            .arg(&log);
        stack.sandbox.spawn(server, None).expect("fault server");
        // A listener that never accepts, its one-slot queue filled (by marked sockets, which
        // the kernel program lets through): further SYNs are dropped.
        let blackhole = format!(
            "import socket,time\n\
             s=socket.socket(); s.bind(('{}',{})); s.listen(0)\n\
             def filler():\n\
             \x20   c=socket.socket(); c.setsockopt(socket.SOL_SOCKET, 36, 0x66707879); c.settimeout(1)\n\
             \x20   try: c.connect(('{}',{}))\n\
             \x20   except Exception: pass\n\
             \x20   return c\n\
             f=[filler() for _ in range(3)]\n\
             open('{}','w').close()\n\
             time.sleep(120)\n",
            BLACKHOLE.0,
            BLACKHOLE.1,
            BLACKHOLE.0,
            BLACKHOLE.1,
            stack.dir.join("blackhole.ready").display()
        );
        let mut hole = Command::new("python3");
        hole.args(["-c", &blackhole]);
        stack.sandbox.spawn(hole, None).expect("blackhole");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(log.with_extension("jsonl.ready").exists()
            && stack.dir.join("blackhole.ready").exists())
        {
            assert!(Instant::now() < deadline, "fault servers did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Faults { stack, log })
    }

    fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Raw client inside the sandbox: connect to `addr`, send each payload in turn (reading
    /// the answer to each before the next), print what came back.
    fn exchange(&self, addr: (&str, u16), payloads: &[&[u8]], half_close: bool) -> String {
        let hexes: Vec<String> = payloads
            .iter()
            .map(|p| {
                format!(
                    "'{}'",
                    p.iter().map(|b| format!("{b:02x}")).collect::<String>()
                )
            })
            .collect();
        let script = format!(
            "import socket,sys,time\n\
             s=socket.create_connection(('{}',{}),timeout=8)\n\
             out=b''\n\
             for h in [{}]:\n\
             \x20   s.sendall(bytes.fromhex(h))\n\
             \x20   time.sleep(0.3)\n\
             {}\
             try:\n\
             \x20   while True:\n\
             \x20       s.settimeout(3)\n\
             \x20       d=s.recv(65536)\n\
             \x20       if not d: break\n\
             \x20       out+=d\n\
             except Exception as e: out+=('<'+type(e).__name__+'>').encode()\n\
             sys.stdout.write(out.decode('latin-1'))\n",
            addr.0,
            addr.1,
            hexes.join(","),
            if half_close {
                "s.shutdown(socket.SHUT_WR)\n"
            } else {
                ""
            }
        );
        self.stack.python(None, &script)
    }
}

fn get(path: &str, close: bool) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\n{}\r\n",
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes()
}

fn statuses(out: &str) -> Vec<&str> {
    out.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| out.get(i + 9..i + 12))
        .collect()
}

#[test]
fn a_closed_reused_connection_is_retried_only_for_idempotent_requests() {
    let Some(f) = Faults::start("fault-retry") else {
        return;
    };
    // Two GETs on one client connection: the second goes on the kept upstream connection,
    // which the server closes without answering; the proxy sends it again on a fresh one.
    let out = f.exchange(
        FAULTY,
        &[&get("/drop-second", false), &get("/drop-second", true)],
        false,
    );
    assert_eq!(statuses(&out), ["200", "200"], "{out}");
    let events = f.events();
    let conns: Vec<_> = events
        .iter()
        .map(|e| e["conn"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(conns.len(), 3, "first, dropped, retried: {events:?}");
    assert_ne!(conns[1], conns[2], "the retry used a fresh connection");

    // A POST is not idempotent: the same failure is a 502, not a second POST.
    let post = b"POST /drop-second HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi";
    let out = f.exchange(FAULTY, &[&get("/drop-second", false), post], false);
    assert_eq!(statuses(&out), ["200", "502"], "{out}");
    let posts = f.events().iter().filter(|e| e["method"] == "POST").count();
    assert_eq!(posts, 1, "the POST reached the server exactly once");
}

#[test]
fn upstream_faults_have_their_status() {
    let Some(f) = Faults::start("fault-status") else {
        return;
    };
    let started = Instant::now();
    let out = f.exchange(FAULTY, &[&get("/slow-head", true)], false);
    assert_eq!(statuses(&out), ["504"], "{out}");
    assert!(out.contains("Connection: close"));
    println!("slow head answered 504 after {:?}", started.elapsed());

    let out = f.exchange(FAULTY, &[&get("/bad-response", true)], false);
    assert_eq!(
        statuses(&out),
        ["502"],
        "malformed upstream response: {out}"
    );
    assert!(
        !out.contains("\r\n\r\nok"),
        "no byte of the bad response reached the client"
    );

    let out = f.exchange(("127.0.0.6", 9), &[&get("/", true)], false);
    assert_eq!(statuses(&out), ["502"], "refused upstream: {out}");

    let started = Instant::now();
    let out = f.exchange(BLACKHOLE, &[&get("/", true)], false);
    assert_eq!(statuses(&out), ["504"], "black-holed upstream: {out}");
    println!(
        "black-holed connect answered 504 after {:?}",
        started.elapsed()
    );
}

#[test]
fn a_reset_mid_body_never_looks_complete() {
    let Some(f) = Faults::start("fault-reset") else {
        return;
    };
    let res = f
        .stack
        .curl(None, "http://127.0.0.5:8080/reset-mid-body", &[]);
    assert_eq!(res.status, 200);
    assert!(
        res.body.len() < 100_000,
        "the client got {} of 100000 bytes",
        res.body.len()
    );
    // curl itself must report the truncation (exit 18: partial file).
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-o",
        "/dev/null",
        "http://127.0.0.5:8080/reset-mid-body",
    ]);
    let (_, out) = f.stack.sandbox.run(cmd, None).expect("curl");
    assert!(!out.status.success(), "curl saw a complete response");
}

#[test]
fn framings_and_extra_bytes() {
    let Some(f) = Faults::start("fault-framing") else {
        return;
    };
    let out = f.exchange(FAULTY, &[&get("/chunked", false), &get("/ok", true)], false);
    assert_eq!(statuses(&out), ["200", "200"], "{out}");
    assert!(
        out.contains("2\r\nok\r\n0\r\n\r\n"),
        "chunked body relayed: {out}"
    );

    let out = f.exchange(FAULTY, &[&get("/close-delimited", false)], false);
    assert_eq!(statuses(&out), ["200"]);
    assert!(out.ends_with("until-close"), "{out}");
    assert!(
        out.contains("Connection: close"),
        "a close-delimited body closes the client connection"
    );

    // Extra bytes after a response: the client gets exactly the response, and the upstream
    // connection is not used again.
    let out = f.exchange(
        FAULTY,
        &[&get("/extra-bytes", false), &get("/ok", true)],
        false,
    );
    assert_eq!(statuses(&out), ["200", "200"], "{out}");
    assert!(!out.contains("JUNK"), "{out}");
    let events = f.events();
    let extra = events
        .iter()
        .find(|e| e["path"] == "/extra-bytes")
        .expect("extra");
    let next = events
        .iter()
        .rev()
        .find(|e| e["path"] == "/ok")
        .expect("ok");
    assert_ne!(
        extra["conn"], next["conn"],
        "the connection with extra bytes was discarded"
    );
}

#[test]
fn client_faults() {
    let Some(f) = Faults::start("fault-client") else {
        return;
    };
    // Gone mid-upload: the upstream never sees the request complete.
    let partial = [
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n".to_vec(),
        vec![b'x'; 1000],
    ]
    .concat();
    let script = format!(
        "import socket,time\n\
         s=socket.create_connection(('{}',{}))\n\
         s.sendall(bytes.fromhex('{}'))\n\
         time.sleep(0.3)\n\
         s.close()\n\
         time.sleep(0.5)\n",
        FAULTY.0,
        FAULTY.1,
        partial
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    f.stack.python(None, &script);
    std::thread::sleep(Duration::from_millis(300));
    let upload = f
        .events()
        .into_iter()
        .find(|e| e["path"] == "/upload")
        .expect("upload seen");
    assert_eq!(upload["complete"], false, "{upload}");
    assert!(upload["body"].as_u64().unwrap_or(0) < 100_000);

    // Half-close after a complete request: the response still arrives.
    let out = f.exchange(FAULTY, &[&get("/ok", false)], true);
    assert_eq!(statuses(&out), ["200"], "{out}");
}

#[test]
fn sigterm_finishes_requests_in_flight_and_closes_idle_connections() {
    let Some(mut f) = Faults::start("fault-term") else {
        return;
    };
    let dir = f.stack.dir.clone();
    // One request in flight (the upstream takes a second), one idle keep-alive connection.
    let script = format!(
        "import socket,sys,time\n\
         idle=socket.create_connection(('{a}',{p}),timeout=10)\n\
         idle.sendall(b'GET /ok HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'); idle.recv(4096)\n\
         s=socket.create_connection(('{a}',{p}),timeout=10)\n\
         s.sendall(b'GET /slow-1s HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n\
         open('{d}/inflight','w').close()\n\
         out=s.recv(4096).decode('latin-1')\n\
         idle.settimeout(5); closed=idle.recv(1)==b''\n\
         time.sleep(0.2)\n\
         try:\n\
         \x20   socket.create_connection(('{a}',{p}),timeout=2); after='connected'\n\
         except ConnectionRefusedError: after='refused'\n\
         open('{d}/client.out','w').write(out.split('\\r\\n')[0]+'|idle closed='+str(closed)+'|after='+after)\n",
        a = FAULTY.0,
        p = FAULTY.1,
        d = dir.display()
    );
    let mut client = Command::new("python3");
    client.args(["-c", &script]);
    let client_pid = f.stack.sandbox.spawn(client, None).expect("client");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !dir.join("inflight").exists() {
        assert!(Instant::now() < deadline, "client did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let status = f
        .stack
        .sandbox
        .terminate(f.stack.proxy_pid, Duration::from_secs(8))
        .expect("proxy exit status");
    let took = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.stack.sandbox.exited(client_pid).is_none() {
        assert!(Instant::now() < deadline, "client did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = std::fs::read_to_string(dir.join("client.out")).expect("client output");
    println!("SIGTERM: proxy exited {status} after {took:?}; client: {out}");
    assert!(status.success(), "exit 0 after SIGTERM");
    assert!(
        took < Duration::from_secs(4),
        "idle connections did not hold the shutdown up"
    );
    assert_eq!(
        out, "HTTP/1.1 200 OK|idle closed=True|after=refused",
        "in-flight request finished"
    );
}
