//! `fastproxy-loadtest`: a small HTTP/1.1 load generator for latency
//! benchmarking of fastproxy (or a direct upstream, or nginx) on loopback.
//!
//! Each of `--connections` OS threads owns one blocking `std::net::TcpStream`
//! and issues `GET` requests back to back (closed loop: one request in flight
//! per connection, keep-alive unless `--new-connection-per-request`). Every
//! response is read far enough to know where it ends (`Content-Length` or
//! chunked; anything else is a protocol error), statuses outside 2xx/3xx are
//! errors, and the latency of each successful request is kept in a per-thread
//! `Vec` that is merged and sorted at the end for exact percentiles.
//!
//! Trade-off: blocking threads keep the tool simple, dependency-free and free
//! of scheduler noise in the measured latency, and they are fine up to a few
//! hundred connections. Beyond that, thread count and context switches start
//! to dominate; use an event-driven generator (wrk, oha) for that regime.
//!
//! Measurement notes: latency runs from the start of an attempt (including the
//! TCP connect when one is needed) to the last byte of the response.
//! `requests` counts attempts (successes plus errors); percentiles cover
//! successes only. Connect failures count as errors, are retried after 10ms
//! and consume a `--max-requests` slot, so the run is always bounded by both
//! limits. With `--new-connection-per-request` the client closes first, so
//! very long runs can exhaust loopback ephemeral ports via TIME_WAIT.

mod response;
mod stats;

use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;

use crate::stats::{ErrorKind, Summary, ThreadStats};

/// Pause after a failed connect so an unreachable target never causes a spin.
const CONNECT_RETRY_DELAY: Duration = Duration::from_millis(10);

#[derive(Debug, Parser)]
#[command(
    name = "fastproxy-loadtest",
    version,
    about = "Closed-loop HTTP/1.1 GET load generator (blocking threads, one per connection)"
)]
struct Cli {
    /// Target URL, http:// only, e.g. http://127.0.0.1:8080/path
    #[arg(long)]
    url: String,
    /// Concurrent connections (one thread each).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Run time limit in seconds (fractions allowed).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Open a fresh TCP connection for every request (sends Connection: close).
    #[arg(long)]
    new_connection_per_request: bool,
    /// Extra request header "Name: value"; repeatable. A Host header replaces the default.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Stop after this many request attempts in total (across connections).
    #[arg(long)]
    max_requests: Option<u64>,
    /// Connect timeout, and time limit for a single request/response exchange.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// Print the summary as a JSON object instead of key=value pairs.
    #[arg(long)]
    json: bool,
}

/// A parsed `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// Host as used for resolution (IPv6 without brackets).
    host: String,
    port: u16,
    /// Value for the Host header (authority as written in the URL).
    authority: String,
    /// Request target: path plus optional query.
    path: String,
}

fn parse_url(url: &str) -> Result<Target> {
    let rest = url
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("http://"))
        .map(|_| &url[7..])
        .ok_or_else(|| anyhow!("only http:// URLs are supported: {url:?}"))?;
    let rest = rest.split('#').next().unwrap_or_default();
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    if path
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        bail!("URL path contains whitespace or control characters: {url:?}");
    }
    if authority.is_empty() || authority.contains('@') {
        bail!("URL needs a host (userinfo is not supported): {url:?}");
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| anyhow!("unterminated IPv6 literal in {url:?}"))?;
        match after {
            "" => (host, None),
            p => (
                host,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| anyhow!("junk after IPv6 literal in {url:?}"))?,
                ),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        bail!("URL needs a host: {url:?}");
    }
    let port = match port {
        None => 80,
        Some(p) => p
            .parse::<u16>()
            .with_context(|| format!("bad port in {url:?}"))?,
    };
    Ok(Target {
        host: host.to_owned(),
        port,
        authority: authority.to_owned(),
        path,
    })
}

/// Splits and validates a `--header "Name: value"` argument.
fn parse_header_arg(arg: &str) -> Result<(String, String)> {
    let (name, value) = arg
        .split_once(':')
        .ok_or_else(|| anyhow!("header must look like \"Name: value\": {arg:?}"))?;
    let name = name.trim();
    let value = value.trim();
    let token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token_char) {
        bail!("invalid header name in {arg:?}");
    }
    if value.chars().any(|c| c.is_ascii_control() && c != '\t') {
        bail!("header value contains control characters: {arg:?}");
    }
    Ok((name.to_owned(), value.to_owned()))
}

/// Serializes the one request every connection sends repeatedly.
fn build_request(target: &Target, headers: &[(String, String)], close: bool) -> Vec<u8> {
    let has = |n: &str| headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(n));
    let mut req = format!("GET {} HTTP/1.1\r\n", target.path);
    if !has("host") {
        req.push_str(&format!("Host: {}\r\n", target.authority));
    }
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    if close && !has("connection") {
        req.push_str("Connection: close\r\n");
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// Everything a run needs, already validated.
#[derive(Debug, Clone)]
struct Config {
    addr: SocketAddr,
    request: Vec<u8>,
    connections: usize,
    duration: Duration,
    new_connection_per_request: bool,
    max_requests: Option<u64>,
    timeout: Duration,
}

impl Config {
    fn from_cli(cli: &Cli) -> Result<Self> {
        let target = parse_url(&cli.url)?;
        let addr = (target.host.as_str(), target.port)
            .to_socket_addrs()
            .with_context(|| format!("resolving {}", target.host))?
            .next()
            .ok_or_else(|| anyhow!("{} resolved to no addresses", target.host))?;
        let headers = cli
            .headers
            .iter()
            .map(|h| parse_header_arg(h))
            .collect::<Result<Vec<_>>>()?;
        if cli.connections == 0 || cli.connections > 10_000 {
            bail!("--connections must be between 1 and 10000");
        }
        if !(cli.duration.is_finite() && cli.duration > 0.0 && cli.duration <= 86_400.0) {
            bail!("--duration must be a positive number of seconds (at most a day)");
        }
        if cli.timeout_ms == 0 {
            bail!("--timeout-ms must be positive");
        }
        Ok(Config {
            addr,
            request: build_request(&target, &headers, cli.new_connection_per_request),
            connections: cli.connections,
            duration: Duration::from_secs_f64(cli.duration),
            new_connection_per_request: cli.new_connection_per_request,
            max_requests: cli.max_requests,
            timeout: Duration::from_millis(cli.timeout_ms),
        })
    }
}

/// Socket wrapper that refuses to read past the current request's deadline,
/// so a server trickling bytes cannot hold a thread beyond `--timeout-ms`
/// (plus at most one socket read timeout).
#[derive(Debug)]
struct DeadlineStream {
    stream: TcpStream,
    deadline: Instant,
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if Instant::now() >= self.deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "response not complete within timeout",
            ));
        }
        self.stream.read(buf)
    }
}

/// One open client connection.
#[derive(Debug)]
struct Conn {
    reader: BufReader<DeadlineStream>,
    line: Vec<u8>,
}

impl Conn {
    fn open(addr: SocketAddr, timeout: Duration) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Conn {
            reader: BufReader::with_capacity(
                16 * 1024,
                DeadlineStream {
                    stream,
                    deadline: Instant::now() + timeout,
                },
            ),
            line: Vec::with_capacity(256),
        })
    }

    /// Sends `request` and reads one full response.
    fn exchange(&mut self, request: &[u8], deadline: Instant) -> io::Result<response::Response> {
        let inner = self.reader.get_mut();
        inner.deadline = deadline;
        inner.stream.write_all(request)?;
        let resp = response::read_response(&mut self.reader, &mut self.line)?;
        if resp.keep_alive && !self.reader.buffer().is_empty() {
            // Without pipelining nothing may follow a response; extra bytes
            // mean the framing we trusted was wrong.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "unexpected bytes after the end of the response",
            ));
        }
        Ok(resp)
    }
}

/// Shared between connection threads.
#[derive(Debug, Default)]
struct Shared {
    /// Attempts started so far (may overshoot `max_requests` by one per thread).
    started: AtomicU64,
    stop: AtomicBool,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The closed loop run by every connection thread.
fn worker(cfg: &Config, deadline: Instant, shared: &Shared) -> ThreadStats {
    let mut st = ThreadStats {
        latencies_us: Vec::with_capacity(4096),
        ..ThreadStats::default()
    };
    let mut conn: Option<Conn> = None;
    loop {
        if shared.stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            break;
        }
        if let Some(max) = cfg.max_requests {
            if shared.started.fetch_add(1, Ordering::Relaxed) >= max {
                break;
            }
        }
        let started = Instant::now();
        let mut c = match conn.take() {
            Some(c) => c,
            None => match Conn::open(cfg.addr, cfg.timeout) {
                Ok(c) => c,
                Err(e) => {
                    st.record_error(ErrorKind::Connect, || format!("connect {}: {e}", cfg.addr));
                    thread::sleep(CONNECT_RETRY_DELAY);
                    continue;
                }
            },
        };
        match c.exchange(&cfg.request, started + cfg.timeout) {
            Ok(resp) => {
                let us = micros(started.elapsed());
                if (200..400).contains(&resp.status) {
                    st.ok += 1;
                    st.latencies_us.push(us);
                } else {
                    st.record_error(ErrorKind::Status, || format!("status {}", resp.status));
                }
                if resp.keep_alive && !cfg.new_connection_per_request {
                    conn = Some(c);
                }
            }
            Err(e) => {
                let kind = if e.kind() == io::ErrorKind::InvalidData {
                    ErrorKind::Protocol
                } else {
                    ErrorKind::Io
                };
                st.record_error(kind, || format!("{kind:?} error: {e}"));
                // `c` is dropped: the connection state is unknown.
            }
        }
    }
    st
}

/// Runs the load test and returns the merged summary.
fn run(cfg: &Config) -> Result<Summary> {
    let shared = Shared::default();
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let per_thread = thread::scope(|s| -> Result<Vec<ThreadStats>> {
        let mut handles = Vec::with_capacity(cfg.connections);
        for i in 0..cfg.connections {
            let spawned = thread::Builder::new()
                .name(format!("conn-{i}"))
                .spawn_scoped(s, || worker(cfg, deadline, &shared));
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    shared.stop.store(true, Ordering::Relaxed);
                    return Err(e).context("spawning connection thread");
                }
            }
        }
        Ok(handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect())
    })?;
    Ok(Summary::merge(per_thread, start.elapsed()))
}

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    let cfg = Config::from_cli(&cli)?;
    let summary = run(&cfg)?;
    if let Some(e) = &summary.first_error {
        eprintln!("first error: {e}");
    }
    if cli.json {
        println!("{}", summary.to_json());
    } else {
        println!("{}", summary.to_line());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::sync::mpsc;

    /// Serves `response` to every request on every connection; closes the
    /// connection after each response when `close` is set. Each request head
    /// is sent to the returned receiver.
    fn serve(response: &'static [u8], close: bool) -> (SocketAddr, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let tx = tx.clone();
                thread::spawn(move || handle(stream, response, close, &tx));
            }
        });
        (addr, rx)
    }

    fn handle(stream: TcpStream, response: &[u8], close: bool, tx: &mpsc::Sender<String>) {
        let Ok(read_half) = stream.try_clone() else {
            return;
        };
        let mut reader = io::BufReader::new(read_half);
        loop {
            let mut head = String::new();
            loop {
                let before = head.len();
                match reader.read_line(&mut head) {
                    Ok(0) | Err(_) => return,
                    Ok(_) if &head[before..] == "\r\n" => break,
                    Ok(_) => {}
                }
            }
            let _ = tx.send(head);
            if (&stream).write_all(response).is_err() || close {
                return;
            }
        }
    }

    fn config(addr: SocketAddr, max_requests: Option<u64>, connections: usize) -> Config {
        let target = parse_url(&format!("http://{addr}/probe?x=1")).expect("url");
        Config {
            addr,
            request: build_request(&target, &[], false),
            connections,
            duration: Duration::from_secs(10),
            new_connection_per_request: false,
            max_requests,
            timeout: Duration::from_secs(2),
        }
    }

    const OK_CL: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    const OK_CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                                5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nTrailer: 1\r\n\r\n";

    #[test]
    fn counts_content_length_requests_exactly() {
        let (addr, rx) = serve(OK_CL, false);
        let s = run(&config(addr, Some(200), 4)).expect("run");
        assert_eq!((s.requests, s.errors), (200, 0), "{s:?}");
        assert!(s.p50_us <= s.p90_us && s.p90_us <= s.p99_us && s.p99_us <= s.max_us);
        assert!(s.max_us > 0);
        let heads: Vec<String> = rx.try_iter().collect();
        assert_eq!(heads.len(), 200);
        assert!(
            heads[0].starts_with("GET /probe?x=1 HTTP/1.1\r\n"),
            "{}",
            heads[0]
        );
        assert!(heads[0].contains(&format!("Host: {addr}\r\n")));
    }

    #[test]
    fn parses_chunked_responses_over_keep_alive() {
        let (addr, _rx) = serve(OK_CHUNKED, false);
        let s = run(&config(addr, Some(100), 2)).expect("run");
        assert_eq!((s.requests, s.errors), (100, 0), "{s:?}");
    }

    #[test]
    fn chunked_body_length_is_decoded() {
        let (addr, _rx) = serve(OK_CHUNKED, false);
        let mut c = Conn::open(addr, Duration::from_secs(2)).expect("connect");
        let req = config(addr, None, 1).request;
        for _ in 0..3 {
            let resp = c
                .exchange(&req, Instant::now() + Duration::from_secs(2))
                .expect("exchange");
            assert_eq!(
                (resp.status, resp.body_len, resp.keep_alive),
                (200, 11, true)
            );
        }
    }

    #[test]
    fn server_side_close_and_new_connection_mode_reconnect() {
        let (addr, _rx) = serve(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            true,
        );
        let s = run(&config(addr, Some(30), 3)).expect("run");
        assert_eq!((s.requests, s.errors), (30, 0), "{s:?}");

        let (addr, rx) = serve(OK_CL, true);
        let mut cfg = config(addr, Some(25), 2);
        cfg.new_connection_per_request = true;
        cfg.request = build_request(
            &parse_url(&format!("http://{addr}/")).expect("url"),
            &[parse_header_arg("X-Test: yes").expect("header")],
            true,
        );
        let s = run(&cfg).expect("run");
        assert_eq!((s.requests, s.errors), (25, 0), "{s:?}");
        let head = rx.recv().expect("a request head");
        assert!(head.contains("X-Test: yes\r\n") && head.contains("Connection: close\r\n"));
    }

    #[test]
    fn status_500_counts_as_error_and_keeps_connection() {
        let (addr, _rx) = serve(b"HTTP/1.1 500 Oops\r\nContent-Length: 3\r\n\r\nbad", false);
        let s = run(&config(addr, Some(20), 1)).expect("run");
        assert_eq!(
            (s.requests, s.errors, s.status_errors),
            (20, 20, 20),
            "{s:?}"
        );
        assert_eq!((s.p50_us, s.max_us), (0, 0));
        assert_eq!(s.first_error.as_deref(), Some("status 500"));
    }

    #[test]
    fn malformed_responses_count_as_protocol_errors() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\n\r\nno framing"[..],
            b"NOT HTTP AT ALL\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n",
        ] {
            let (addr, _rx) = serve(bad, true);
            let s = run(&config(addr, Some(10), 2)).expect("run");
            assert_eq!(
                (s.requests, s.errors, s.protocol_errors),
                (10, 10, 10),
                "{s:?}"
            );
        }
    }

    #[test]
    fn extra_bytes_after_response_are_a_protocol_error() {
        // Claims 2 body bytes but sends 5: the leftover must not be trusted.
        let (addr, _rx) = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhello", false);
        let mut c = Conn::open(addr, Duration::from_secs(2)).expect("connect");
        let req = config(addr, None, 1).request;
        // Normally caught right away; if the leftover arrived late, the next
        // exchange reads it as a (malformed) status line instead.
        let err = (0..2)
            .find_map(|_| {
                c.exchange(&req, Instant::now() + Duration::from_secs(2))
                    .err()
            })
            .expect("leftover bytes must cause an error");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn refused_connections_are_bounded_errors() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        // The listener is dropped: connects are refused.
        let started = Instant::now();
        let s = run(&config(addr, Some(5), 1)).expect("run");
        assert_eq!((s.requests, s.errors, s.connect_errors), (5, 5, 5), "{s:?}");
        assert!(
            started.elapsed() >= CONNECT_RETRY_DELAY * 5,
            "must not spin"
        );

        let mut cfg = config(addr, None, 2);
        cfg.duration = Duration::from_millis(100);
        let s = run(&cfg).expect("run");
        assert!(s.elapsed < Duration::from_secs(2), "{s:?}");
        assert!(s.errors == s.requests && s.requests <= 2 * 11, "{s:?}");
    }

    #[test]
    fn duration_bounds_the_run() {
        let (addr, _rx) = serve(OK_CL, false);
        let mut cfg = config(addr, None, 2);
        cfg.duration = Duration::from_millis(200);
        let s = run(&cfg).expect("run");
        assert!(s.requests > 0 && s.errors == 0, "{s:?}");
        assert!(s.elapsed >= cfg.duration && s.elapsed < Duration::from_secs(2));
    }

    #[test]
    fn stalled_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut cfg = config(addr, Some(1), 1);
        cfg.timeout = Duration::from_millis(100);
        // Accepted by the kernel backlog, never answered.
        let s = run(&cfg).expect("run");
        assert_eq!((s.requests, s.io_errors), (1, 1), "{s:?}");
        drop(listener);
    }

    #[test]
    fn url_parsing() {
        let t = parse_url("http://127.0.0.1:8080/a/b?c=d#frag").expect("url");
        assert_eq!(
            (
                t.host.as_str(),
                t.port,
                t.authority.as_str(),
                t.path.as_str()
            ),
            ("127.0.0.1", 8080, "127.0.0.1:8080", "/a/b?c=d")
        );
        let t = parse_url("HTTP://example.test").expect("url");
        assert_eq!((t.port, t.path.as_str()), (80, "/"));
        let t = parse_url("http://[::1]:9000?q").expect("url");
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 9000, "/?q")
        );
        for bad in [
            "https://x/",
            "ftp://x",
            "http://",
            "http://:80/",
            "http://x:99999/",
            "http://u@x/",
            "http://x/a b",
            "http://[::1/",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn header_args_and_request_bytes() {
        let h = parse_header_arg("X-Api-Key:  abc def ").expect("header");
        assert_eq!(h, ("X-Api-Key".to_owned(), "abc def".to_owned()));
        assert!(parse_header_arg("NoColon").is_err());
        assert!(parse_header_arg("Bad Name: v").is_err());
        assert!(parse_header_arg("X: a\r\nInjected: 1").is_err());

        let t = parse_url("http://127.0.0.1:8080/p").expect("url");
        let req = build_request(&t, &[("Host".into(), "metadata.test".into())], false);
        assert_eq!(req, b"GET /p HTTP/1.1\r\nHost: metadata.test\r\n\r\n");
        let req = build_request(&t, &[], true);
        assert_eq!(
            req,
            b"GET /p HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn cli_parses_and_validates() {
        let cli = Cli::try_parse_from([
            "fastproxy-loadtest",
            "--url",
            "http://127.0.0.1:1/x",
            "--connections",
            "3",
            "--duration",
            "0.5",
            "--new-connection-per-request",
            "--header",
            "A: 1",
            "--header",
            "B: 2",
            "--max-requests",
            "7",
            "--json",
        ])
        .expect("cli");
        let cfg = Config::from_cli(&cli).expect("config");
        assert_eq!(cfg.connections, 3);
        assert_eq!(cfg.duration, Duration::from_millis(500));
        assert_eq!(cfg.max_requests, Some(7));
        assert!(cfg.new_connection_per_request && cli.json);
        let defaults = Cli::try_parse_from(["fastproxy-loadtest", "--url", "http://127.0.0.1:1/"])
            .expect("cli");
        assert_eq!((defaults.connections, defaults.duration), (1, 5.0));
        let mut zero = defaults;
        zero.connections = 0;
        assert!(Config::from_cli(&zero).is_err());
    }
}
