//! `connbench`: a tight, single-threaded TCP connect-rate benchmark (std only).
//!
//! Modes:
//! - `connect-close`: blocking `connect()` then `close()`, back to back.
//! - `connect-request`: connect, send one `GET PATH HTTP/1.1` with `Connection: close`, read
//!   until the server closes, classify by status code.
//!
//! Every operation ends in one outcome: `ok` (connected; `connect-close` only), `httpNNN`
//! (a response with status NNN; `connect-request` only), an errno category (`eperm`,
//! `refused`, `reset`, `netunreach`, `timeout`, ...; `errnoN` for the rest), `eof` (closed
//! before a status line) or `protocol` (not an HTTP status line). The summary is one line:
//!
//! ```text
//! mode=connect-close ops=123 seconds=2.000 ops_per_s=61.5 p50_us=12.3 p99_us=40.1 max_us=90.2 cpu_us_per_op=11.80 outcomes=ok:123
//! ```
//!
//! Latency runs from before `socket()` to after `close()` and covers every operation,
//! whatever its outcome (in a benchmark run there is normally a single one). Percentiles are
//! exact (nearest rank over all samples). `cpu_us_per_op` is the benchmark thread's on-CPU
//! time per operation (see [`thread_cpu_ns`]): unlike `ops_per_s` it stays put when other
//! tasks share the CPU. With `--expect CATEGORY` the exit status is 1 when
//! any operation ended otherwise (a sanity check that the run measured what it meant to, never
//! a check of durations); the expected category is always printed, with 0 if it never occurred.
//!
//! The connect is a plain blocking `connect()` (no timeout: that would add syscalls to the
//! measured path); a dropped SYN shows up as a one-second outlier in `max_us`. Reads in
//! `connect-request` time out after `--timeout-ms`. The client closes first in
//! `connect-close`, so its ports go through TIME_WAIT: at high rates against one address,
//! widen `net.ipv4.ip_local_port_range` or lower `net.ipv4.tcp_max_tw_buckets` (per network
//! namespace; `kernel-overhead.sh` does both in its private namespace).

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: connbench --mode connect-close|connect-request --addr IP:PORT [options]

  --duration S        measured run time in seconds (default 5)
  --warmup S          unmeasured run time before it (default 0)
  --ops N             stop after N measured operations
  --path P            request target for connect-request (default /)
  --host H            Host header (default: the --addr)
  --header 'N: V'     extra request header; repeatable
  --timeout-ms MS     read/write timeout in connect-request (default 2000)
  --expect CATEGORY   exit 1 unless every operation ended in CATEGORY
                      (ok, httpNNN, eperm, refused, reset, ...)";

/// What one run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    ConnectClose,
    ConnectRequest,
}

impl Mode {
    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "connect-close" => Ok(Mode::ConnectClose),
            "connect-request" => Ok(Mode::ConnectRequest),
            _ => Err(format!(
                "unknown --mode {s:?} (connect-close or connect-request)"
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::ConnectClose => "connect-close",
            Mode::ConnectRequest => "connect-request",
        }
    }
}

/// Validated command line.
#[derive(Debug, Clone, PartialEq)]
struct Args {
    mode: Mode,
    addr: SocketAddr,
    duration: Duration,
    warmup: Duration,
    max_ops: Option<u64>,
    path: String,
    host: Option<String>,
    headers: Vec<(String, String)>,
    timeout: Duration,
    expect: Option<String>,
}

#[derive(Debug, PartialEq)]
enum Command {
    Help,
    Run(Box<Args>),
}

fn parse_seconds(flag: &str, v: &str) -> Result<Duration, String> {
    let secs: f64 = v
        .parse()
        .map_err(|_| format!("{flag} wants seconds, got {v:?}"))?;
    if !(secs.is_finite() && (0.0..=86_400.0).contains(&secs)) {
        return Err(format!("{flag} must be between 0 and 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Splits and validates a `--header "Name: value"` argument.
fn parse_header(arg: &str) -> Result<(String, String), String> {
    let (name, value) = arg
        .split_once(':')
        .ok_or_else(|| format!("header must look like \"Name: value\": {arg:?}"))?;
    let (name, value) = (name.trim(), value.trim());
    let token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token_char) {
        return Err(format!("invalid header name in {arg:?}"));
    }
    if value.chars().any(|c| c.is_ascii_control() && c != '\t') {
        return Err(format!("header value contains control characters: {arg:?}"));
    }
    Ok((name.to_owned(), value.to_owned()))
}

fn parse_args<I: IntoIterator<Item = String>>(argv: I) -> Result<Command, String> {
    let mut it = argv.into_iter();
    let mut mode = None;
    let mut addr = None;
    let mut duration = Duration::from_secs(5);
    let mut warmup = Duration::ZERO;
    let mut max_ops = None;
    let mut path = "/".to_owned();
    let mut host = None;
    let mut headers = Vec::new();
    let mut timeout = Duration::from_millis(2000);
    let mut expect = None;
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Command::Help);
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        if !flag.starts_with("--") {
            return Err(format!("unexpected argument {arg:?}"));
        }
        let value = match inline {
            Some(v) => v,
            None => it.next().ok_or_else(|| format!("{flag} needs a value"))?,
        };
        match flag.as_str() {
            "--mode" => mode = Some(Mode::parse(&value)?),
            "--addr" => {
                addr = Some(
                    value
                        .parse::<SocketAddr>()
                        .map_err(|_| format!("--addr wants IP:PORT, got {value:?}"))?,
                );
            }
            "--duration" => duration = parse_seconds("--duration", &value)?,
            "--warmup" => warmup = parse_seconds("--warmup", &value)?,
            "--ops" => {
                let n: u64 = value
                    .parse()
                    .map_err(|_| format!("--ops wants a count, got {value:?}"))?;
                if n == 0 {
                    return Err("--ops must be positive".to_owned());
                }
                max_ops = Some(n);
            }
            "--path" => {
                if !value.starts_with('/')
                    || value
                        .bytes()
                        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
                {
                    return Err(format!(
                        "--path must start with / and contain no whitespace: {value:?}"
                    ));
                }
                path = value;
            }
            "--host" => {
                if value.is_empty() || value.chars().any(|c| c.is_ascii_control() || c == ' ') {
                    return Err(format!("bad --host {value:?}"));
                }
                host = Some(value);
            }
            "--header" => headers.push(parse_header(&value)?),
            "--timeout-ms" => {
                let ms: u64 = value
                    .parse()
                    .map_err(|_| format!("--timeout-ms wants milliseconds, got {value:?}"))?;
                if ms == 0 {
                    return Err("--timeout-ms must be positive".to_owned());
                }
                timeout = Duration::from_millis(ms);
            }
            "--expect" => {
                if !is_category(&value) {
                    return Err(format!(
                        "--expect wants an outcome category (ok, httpNNN, eperm, refused, ...), \
                         got {value:?}"
                    ));
                }
                expect = Some(value);
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    let mode = mode.ok_or("--mode is required")?;
    let addr = addr.ok_or("--addr is required")?;
    if duration.is_zero() && max_ops.is_none() {
        return Err("--duration must be positive (or give --ops)".to_owned());
    }
    Ok(Command::Run(Box::new(Args {
        mode,
        addr,
        duration,
        warmup,
        max_ops,
        path,
        host,
        headers,
        timeout,
        expect,
    })))
}

/// How one operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// `connect-close`: the connect succeeded.
    Ok,
    /// `connect-request`: a complete response with this status, then a clean close.
    Status(u16),
    /// A system call failed with this errno.
    Errno(i32),
    /// An I/O error without an errno.
    Io,
    /// The server closed before a whole status line arrived.
    Eof,
    /// The response did not start with an HTTP/1.x status line.
    Protocol,
}

/// Linux errno values (asm-generic) and their category names.
const ERRNO_NAMES: &[(i32, &str)] = &[
    (1, "eperm"),
    (4, "eintr"),
    (11, "timeout"), // EAGAIN: a read/write timeout (SO_RCVTIMEO/SO_SNDTIMEO)
    (13, "eacces"),
    (24, "emfile"),
    (32, "epipe"),
    (98, "addrinuse"),
    (99, "addrnotavail"),
    (101, "netunreach"),
    (103, "aborted"),
    (104, "reset"),
    (110, "timedout"),
    (111, "refused"),
    (113, "hostunreach"),
];

impl Outcome {
    fn from_io(e: &io::Error) -> Self {
        match e.raw_os_error() {
            Some(n) => Outcome::Errno(n),
            None if e.kind() == io::ErrorKind::UnexpectedEof => Outcome::Eof,
            None => Outcome::Io,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Outcome::Ok => f.write_str("ok"),
            Outcome::Status(code) => write!(f, "http{code}"),
            Outcome::Errno(n) => match ERRNO_NAMES.iter().find(|(e, _)| *e == n) {
                Some((_, name)) => f.write_str(name),
                None => write!(f, "errno{n}"),
            },
            Outcome::Io => f.write_str("io"),
            Outcome::Eof => f.write_str("eof"),
            Outcome::Protocol => f.write_str("protocol"),
        }
    }
}

/// Whether `s` names an outcome category (as printed).
fn is_category(s: &str) -> bool {
    let numeric = |rest: &str| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit());
    matches!(s, "ok" | "io" | "eof" | "protocol")
        || ERRNO_NAMES.iter().any(|(_, name)| *name == s)
        || s.strip_prefix("http")
            .is_some_and(|r| r.len() == 3 && numeric(r))
        || s.strip_prefix("errno").is_some_and(numeric)
}

/// Outcome counts, latency samples and time spent of one measured run.
#[derive(Debug, Default)]
struct Tally {
    outcomes: BTreeMap<Outcome, u64>,
    latencies_ns: Vec<u64>,
    /// Wall-clock time of the measured part.
    elapsed: Duration,
    /// On-CPU time of the benchmark thread during the measured part, when known.
    cpu_ns: Option<u64>,
}

impl Tally {
    fn with_capacity(n: usize) -> Self {
        Tally {
            latencies_ns: Vec::with_capacity(n),
            ..Tally::default()
        }
    }

    fn record(&mut self, outcome: Outcome, latency: Duration) {
        *self.outcomes.entry(outcome).or_insert(0) += 1;
        self.latencies_ns
            .push(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
    }

    fn ops(&self) -> u64 {
        self.outcomes.values().sum()
    }

    /// `ok:12,eperm:0`: every observed category (in a stable order), plus `expect` with 0
    /// when it never occurred.
    fn outcomes_field(&self, expect: Option<&str>) -> String {
        let mut parts: Vec<String> = self
            .outcomes
            .iter()
            .map(|(o, n)| format!("{o}:{n}"))
            .collect();
        if let Some(e) = expect {
            if !self.outcomes.keys().any(|o| o.to_string() == e) {
                parts.insert(0, format!("{e}:0"));
            }
        }
        parts.join(",")
    }

    /// Operations that did not end in `expect`.
    fn unexpected(&self, expect: &str) -> u64 {
        self.outcomes
            .iter()
            .filter(|(o, _)| o.to_string() != expect)
            .map(|(_, n)| n)
            .sum()
    }
}

/// Nearest-rank percentile (`p` in 0..=100) of ascending `sorted`; `None` when empty.
fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    // Float-to-int casts saturate; the clamp keeps the rank in 1..=n.
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, n) - 1])
}

fn fmt_us(ns: Option<u64>) -> String {
    match ns {
        Some(ns) => format!("{:.1}", ns as f64 / 1000.0),
        None => "nan".to_owned(),
    }
}

/// On-CPU time of the calling thread so far in ns (`/proc/thread-self/schedstat`). It
/// includes the softirq work the kernel does in the thread's context (on loopback: most of
/// the handshake, both sides) unless the kernel accounts IRQ time apart
/// (CONFIG_IRQ_TIME_ACCOUNTING). Unlike the wall-clock rate it does not move when another
/// task takes the CPU away.
fn thread_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

/// The one-line summary.
fn summary_line(mode: Mode, tally: &mut Tally, expect: Option<&str>) -> String {
    tally.latencies_ns.sort_unstable();
    let ops = tally.ops();
    let secs = tally.elapsed.as_secs_f64();
    let rate = if secs > 0.0 { ops as f64 / secs } else { 0.0 };
    let cpu = match tally.cpu_ns {
        Some(ns) if ops > 0 => format!("{:.2}", ns as f64 / 1000.0 / ops as f64),
        _ => "nan".to_owned(),
    };
    let l = &tally.latencies_ns;
    format!(
        "mode={} ops={} seconds={:.3} ops_per_s={:.1} p50_us={} p99_us={} max_us={} \
         cpu_us_per_op={} outcomes={}",
        mode.name(),
        ops,
        secs,
        rate,
        fmt_us(percentile(l, 50.0)),
        fmt_us(percentile(l, 99.0)),
        fmt_us(l.last().copied()),
        cpu,
        tally.outcomes_field(expect),
    )
}

/// The request `connect-request` sends.
fn build_request(args: &Args) -> Vec<u8> {
    let has = |n: &str| args.headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(n));
    let mut req = format!("GET {} HTTP/1.1\r\n", args.path);
    if !has("host") {
        let host = args.host.clone().unwrap_or_else(|| args.addr.to_string());
        req.push_str(&format!("Host: {host}\r\n"));
    }
    for (name, value) in &args.headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    if !has("connection") {
        req.push_str("Connection: close\r\n");
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// The status code of a response starting with `head`; `None` while the status line is
/// incomplete, `Some(Err(()))` when it is not HTTP/1.x.
fn parse_status(head: &[u8]) -> Option<Result<u16, ()>> {
    // "HTTP/1.1 200" is 12 bytes; the code must be followed by a space or the line end.
    let prefix_ok = |h: &[u8]| h.iter().zip(b"HTTP/1.".iter()).all(|(a, b)| a == b);
    if head.len() < 13 {
        return if prefix_ok(head) { None } else { Some(Err(())) };
    }
    if !prefix_ok(head) || !head[7].is_ascii_digit() || head[8] != b' ' {
        return Some(Err(()));
    }
    let code = &head[9..12];
    if !code.iter().all(u8::is_ascii_digit) || !matches!(head[12], b' ' | b'\r' | b'\n') {
        return Some(Err(()));
    }
    Some(Ok(code
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'))))
}

fn connect_close(addr: SocketAddr) -> Outcome {
    match TcpStream::connect(addr) {
        Ok(s) => {
            drop(s);
            Outcome::Ok
        }
        Err(e) => Outcome::from_io(&e),
    }
}

fn connect_request(addr: SocketAddr, request: &[u8], timeout: Duration, buf: &mut [u8]) -> Outcome {
    let mut s = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => return Outcome::from_io(&e),
    };
    let io = (|| -> io::Result<Outcome> {
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.write_all(request)?;
        // The status line comes first; keep (a copy of) its first bytes, then drain to EOF.
        let mut head = [0u8; 16];
        let mut have = 0;
        let mut status = None;
        loop {
            let n = s.read(buf)?;
            if n == 0 {
                return Ok(match status {
                    Some(code) => Outcome::Status(code),
                    None if have == 0 => Outcome::Eof,
                    None => match parse_status(&head[..have]) {
                        Some(Ok(code)) => Outcome::Status(code),
                        Some(Err(())) => Outcome::Protocol,
                        None => Outcome::Eof,
                    },
                });
            }
            if status.is_none() {
                let take = n.min(head.len() - have);
                head[have..have + take].copy_from_slice(&buf[..take]);
                have += take;
                match parse_status(&head[..have]) {
                    Some(Ok(code)) => status = Some(code),
                    Some(Err(())) => return Ok(Outcome::Protocol),
                    None => {}
                }
            }
        }
    })();
    io.unwrap_or_else(|e| Outcome::from_io(&e))
}

fn bench(args: &Args) -> Tally {
    let request = build_request(args);
    let mut buf = vec![0u8; 16 * 1024];
    let mut op = || match args.mode {
        Mode::ConnectClose => connect_close(args.addr),
        Mode::ConnectRequest => connect_request(args.addr, &request, args.timeout, &mut buf),
    };
    let warm_until = Instant::now() + args.warmup;
    while Instant::now() < warm_until {
        op();
    }
    let mut tally = Tally::with_capacity(1 << 20);
    let cpu_start = thread_cpu_ns();
    let start = Instant::now();
    let deadline = start + args.duration;
    loop {
        let t0 = Instant::now();
        let outcome = op();
        let t1 = Instant::now();
        tally.record(outcome, t1 - t0);
        if t1 >= deadline
            || args
                .max_ops
                .is_some_and(|m| tally.latencies_ns.len() as u64 >= m)
        {
            tally.elapsed = t1 - start;
            break;
        }
    }
    tally.cpu_ns = cpu_start
        .zip(thread_cpu_ns())
        .map(|(a, b)| b.saturating_sub(a));
    tally
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Run(args)) => args,
        Err(e) => {
            eprintln!("connbench: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut tally = bench(&args);
    println!(
        "{}",
        summary_line(args.mode, &mut tally, args.expect.as_deref())
    );
    if let Some(expect) = &args.expect {
        let bad = tally.unexpected(expect);
        if bad > 0 || tally.ops() == 0 {
            eprintln!(
                "connbench: {bad} of {} operations did not end in {expect}",
                tally.ops()
            );
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn parse(args: &[&str]) -> Result<Command, String> {
        parse_args(args.iter().map(|s| (*s).to_owned()))
    }

    fn run_args(args: &[&str]) -> Args {
        match parse(args).expect("valid") {
            Command::Run(a) => *a,
            Command::Help => panic!("not help"),
        }
    }

    #[test]
    fn parses_every_option() {
        let a = run_args(&[
            "--mode",
            "connect-request",
            "--addr=168.63.129.16:80",
            "--duration",
            "0.5",
            "--warmup=1",
            "--ops",
            "10",
            "--path",
            "/metadata/instance?api-version=2021-08-01",
            "--host",
            "example.test",
            "--header",
            "Metadata: true",
            "--header=X-A:b",
            "--timeout-ms",
            "300",
            "--expect",
            "http403",
        ]);
        assert_eq!(a.mode, Mode::ConnectRequest);
        assert_eq!(a.addr, "168.63.129.16:80".parse().expect("addr"));
        assert_eq!(
            (a.duration, a.warmup, a.max_ops),
            (Duration::from_millis(500), Duration::from_secs(1), Some(10))
        );
        assert_eq!(a.path, "/metadata/instance?api-version=2021-08-01");
        assert_eq!(a.host.as_deref(), Some("example.test"));
        assert_eq!(
            a.headers,
            vec![
                ("Metadata".to_owned(), "true".to_owned()),
                ("X-A".to_owned(), "b".to_owned())
            ]
        );
        assert_eq!(a.timeout, Duration::from_millis(300));
        assert_eq!(a.expect.as_deref(), Some("http403"));
    }

    #[test]
    fn defaults_and_help() {
        let a = run_args(&["--mode", "connect-close", "--addr", "127.0.0.1:9000"]);
        assert_eq!(a.duration, Duration::from_secs(5));
        assert_eq!((a.warmup, a.max_ops), (Duration::ZERO, None));
        assert_eq!((a.path.as_str(), a.expect.as_deref()), ("/", None));
        assert_eq!(parse(&["--help"]), Ok(Command::Help));
        assert_eq!(parse(&["--mode", "connect-close", "-h"]), Ok(Command::Help));
    }

    #[test]
    fn rejects_bad_arguments() {
        for bad in [
            &["--addr", "127.0.0.1:1"][..],
            &["--mode", "connect-close"],
            &["--mode", "nope", "--addr", "127.0.0.1:1"],
            &["--mode", "connect-close", "--addr", "localhost:80"],
            &["--mode", "connect-close", "--addr", "127.0.0.1"],
            &[
                "--mode",
                "connect-close",
                "--addr",
                "127.0.0.1:1",
                "--duration",
                "-1",
            ],
            &[
                "--mode",
                "connect-close",
                "--addr",
                "127.0.0.1:1",
                "--duration",
                "NaN",
            ],
            &[
                "--mode",
                "connect-close",
                "--addr",
                "127.0.0.1:1",
                "--duration",
                "0",
            ],
            &[
                "--mode",
                "connect-close",
                "--addr",
                "127.0.0.1:1",
                "--ops",
                "0",
            ],
            &[
                "--mode",
                "connect-close",
                "--addr",
                "127.0.0.1:1",
                "--path",
                "x",
            ],
            &[
                "--mode",
                "connect-close",
                "--addr",
                "127.0.0.1:1",
                "--path",
                "/a b",
            ],
            &[
                "--mode",
                "connect-close",
                "--addr",
                "127.0.0.1:1",
                "--header",
                "NoColon",
            ],
            &[
                "--mode",
                "connect-close",
                "--addr",
                "127.0.0.1:1",
                "--header",
                "A B: c",
            ],
            &[
                "--mode",
                "connect-close",
                "--addr",
                "127.0.0.1:1",
                "--expect",
                "EPERM",
            ],
            &[
                "--mode",
                "connect-close",
                "--addr",
                "127.0.0.1:1",
                "--expect",
                "http2000",
            ],
            &[
                "--mode",
                "connect-close",
                "--addr",
                "127.0.0.1:1",
                "--timeout-ms",
                "0",
            ],
            &[
                "--mode",
                "connect-close",
                "--addr",
                "127.0.0.1:1",
                "--bogus",
                "1",
            ],
            &["--mode", "connect-close", "--addr", "127.0.0.1:1", "stray"],
            &["--mode", "connect-close", "--addr"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        // --duration 0 is fine when --ops bounds the run.
        let a = run_args(&[
            "--mode",
            "connect-close",
            "--addr",
            "127.0.0.1:1",
            "--duration",
            "0",
            "--ops",
            "1",
        ]);
        assert_eq!(a.max_ops, Some(1));
    }

    #[test]
    fn outcome_names_and_categories() {
        assert_eq!(Outcome::Ok.to_string(), "ok");
        assert_eq!(Outcome::Status(403).to_string(), "http403");
        assert_eq!(Outcome::Errno(1).to_string(), "eperm");
        assert_eq!(Outcome::Errno(111).to_string(), "refused");
        assert_eq!(Outcome::Errno(104).to_string(), "reset");
        assert_eq!(Outcome::Errno(12345).to_string(), "errno12345");
        let e = io::Error::from_raw_os_error(1);
        assert_eq!(Outcome::from_io(&e), Outcome::Errno(1));
        let e = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(Outcome::from_io(&e), Outcome::Eof);
        let e = io::Error::other("x");
        assert_eq!(Outcome::from_io(&e), Outcome::Io);
        for ok in [
            "ok", "http200", "eperm", "refused", "errno7", "eof", "protocol",
        ] {
            assert!(is_category(ok), "{ok}");
        }
        for bad in [
            "", "EPERM", "http", "http20", "httpabc", "errno", "errno-1", "x",
        ] {
            assert!(!is_category(bad), "{bad}");
        }
    }

    #[test]
    fn tally_counts_and_formats_outcomes() {
        let mut t = Tally::default();
        for _ in 0..3 {
            t.record(Outcome::Errno(1), Duration::from_micros(5));
        }
        t.record(Outcome::Ok, Duration::from_micros(7));
        assert_eq!(t.ops(), 4);
        assert_eq!(t.outcomes_field(None), "ok:1,eperm:3");
        assert_eq!(t.outcomes_field(Some("eperm")), "ok:1,eperm:3");
        assert_eq!(t.outcomes_field(Some("http403")), "http403:0,ok:1,eperm:3");
        assert_eq!(t.unexpected("eperm"), 1);
        assert_eq!(t.unexpected("ok"), 3);
        assert_eq!(t.unexpected("refused"), 4);
        assert_eq!(Tally::default().outcomes_field(Some("ok")), "ok:0");
        assert_eq!(Tally::default().outcomes_field(None), "");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7], 50.0), Some(7));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[1, 2], 50.0), Some(1));
        assert_eq!(percentile(&[1, 2], 51.0), Some(2));
        assert_eq!(percentile(&[1, 2, 3], 99.0), Some(3));
        assert_eq!(percentile(&[], 50.0), None);
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 99.0), Some(990));
    }

    #[test]
    fn summary_line_is_machine_readable() {
        let mut t = Tally::default();
        for us in [30, 10, 20, 40] {
            t.record(Outcome::Ok, Duration::from_micros(us));
        }
        t.elapsed = Duration::from_secs(2);
        t.cpu_ns = Some(50_000);
        let line = summary_line(Mode::ConnectClose, &mut t, Some("ok"));
        assert_eq!(
            line,
            "mode=connect-close ops=4 seconds=2.000 ops_per_s=2.0 p50_us=20.0 p99_us=40.0 \
             max_us=40.0 cpu_us_per_op=12.50 outcomes=ok:4"
        );
        let mut empty = Tally::default();
        let line = summary_line(Mode::ConnectRequest, &mut empty, None);
        assert_eq!(
            line,
            "mode=connect-request ops=0 seconds=0.000 ops_per_s=0.0 p50_us=nan p99_us=nan \
             max_us=nan cpu_us_per_op=nan outcomes="
        );
    }

    #[test]
    fn thread_cpu_time_is_read() {
        let a = thread_cpu_ns().expect("/proc/thread-self/schedstat");
        let b = thread_cpu_ns().expect("/proc/thread-self/schedstat");
        assert!(b >= a);
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(Ok(200)));
        assert_eq!(parse_status(b"HTTP/1.0 403\r\n"), Some(Ok(403)));
        assert_eq!(parse_status(b"HTTP/1.1 20"), None);
        assert_eq!(parse_status(b""), None);
        assert_eq!(parse_status(b"HTTP/1.1 2000 "), Some(Err(())));
        assert_eq!(parse_status(b"HTTP/2 200 OK\r\n"), Some(Err(())));
        assert_eq!(parse_status(b"SSH-2.0-x"), Some(Err(())));
        assert_eq!(parse_status(b"HTTP/1.1 abc OK\r\n"), Some(Err(())));
    }

    #[test]
    fn request_bytes() {
        let a = run_args(&[
            "--mode",
            "connect-request",
            "--addr",
            "169.254.169.254:80",
            "--path",
            "/metadata/instance?api-version=2021-08-01",
            "--header",
            "Metadata: true",
        ]);
        assert_eq!(
            build_request(&a),
            b"GET /metadata/instance?api-version=2021-08-01 HTTP/1.1\r\n\
              Host: 169.254.169.254:80\r\nMetadata: true\r\nConnection: close\r\n\r\n"
        );
        let a = run_args(&[
            "--mode",
            "connect-request",
            "--addr",
            "127.0.0.1:1",
            "--host",
            "h.test",
        ]);
        assert_eq!(
            build_request(&a),
            b"GET / HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n"
        );
    }

    /// One in-process round trip per mode against real loopback sockets (no durations checked).
    #[test]
    fn modes_against_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { break };
                let mut req = [0u8; 1024];
                let _ = s.read(&mut req);
                let _ = s.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
            }
        });
        let a = run_args(&[
            "--mode",
            "connect-request",
            "--addr",
            &addr.to_string(),
            "--ops",
            "3",
            "--duration",
            "10",
        ]);
        let t = bench(&a);
        assert_eq!(t.outcomes_field(None), "http403:3");

        let closed = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        // The listener is dropped: connects are refused.
        let a = run_args(&[
            "--mode",
            "connect-close",
            "--addr",
            &closed.to_string(),
            "--ops",
            "2",
            "--duration",
            "10",
        ]);
        assert_eq!(bench(&a).outcomes_field(None), "refused:2");
        let a = run_args(&[
            "--mode",
            "connect-close",
            "--addr",
            &addr.to_string(),
            "--ops",
            "2",
            "--duration",
            "10",
        ]);
        assert_eq!(bench(&a).outcomes_field(None), "ok:2");
    }
}
