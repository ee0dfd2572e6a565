//! Drives a running stand-in over real sockets with a tiny blocking HTTP client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

use super::*;

mod secure_channel;

/// Three distinct free loopback ports (held together so they differ, then released).
fn free_addrs() -> [SocketAddr; 3] {
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a probe listener"))
        .collect();
    let addrs: Vec<SocketAddr> = listeners
        .iter()
        .map(|l| l.local_addr().expect("probe address"))
        .collect();
    [addrs[0], addrs[1], addrs[2]]
}

fn temp_path(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "standin-test-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

struct Fixture {
    ws: SocketAddr,
    hg: SocketAddr,
    imds: SocketAddr,
    record: PathBuf,
    handle: Option<StandinHandle>,
}

impl Fixture {
    fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// Starts with a configuration adjusted by `configure` (addresses and record are set).
    fn start_with(configure: impl FnOnce(&mut StandinConfig)) -> Self {
        let [ws, hg, imds] = free_addrs();
        let record = temp_path("record.jsonl");
        let mut config = StandinConfig::new(ws, hg, imds);
        config.record = Some(record.clone());
        configure(&mut config);
        let handle = spawn(config).expect("start the stand-in");
        Self {
            ws,
            hg,
            imds,
            record,
            handle: Some(handle),
        }
    }

    fn records(&self) -> Vec<RecordedRequest> {
        read_records(&self.record).expect("read records")
    }

    fn handle(&self) -> &StandinHandle {
        self.handle.as_ref().expect("running")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.stop().expect("stop the stand-in");
        }
        let _ = std::fs::remove_file(&self.record);
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// Reads one response (skipping interim 1xx ones).
fn read_reply(reader: &mut impl BufRead) -> Reply {
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("status line");
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).expect("header line");
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (n, v) = h.split_once(':').expect("header colon");
            headers.push((n.to_string(), v.trim().to_string()));
        }
        if status < 200 {
            continue;
        }
        let mut reply = Reply {
            status,
            headers,
            body: Vec::new(),
        };
        if status != 304 && status != 204 {
            match reply.header("content-length") {
                Some(n) => {
                    let n: usize = n.parse().expect("content-length");
                    reply.body = vec![0; n];
                    reader.read_exact(&mut reply.body).expect("body");
                }
                None => {
                    reader.read_to_end(&mut reply.body).expect("body to end");
                }
            }
        }
        return reply;
    }
}

/// Sends raw bytes on a new connection and reads one response.
fn raw(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.write_all(request).expect("send");
    read_reply(&mut BufReader::new(stream))
}

fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("Connection: close\r\n\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    raw(addr, &bytes)
}

fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Reply {
    request(addr, "GET", target, headers, b"")
}

const MD: (&str, &str) = ("Metadata", "true");

#[test]
fn imds_requires_the_metadata_header() {
    let f = Fixture::start();
    let target = "/metadata/instance?api-version=2021-08-01";
    let r = get(f.imds, target, &[]);
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"],
        "Bad request. Required metadata header not specified"
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(get(f.imds, target, &[("Metadata", "false")]).status, 400);
    assert_eq!(get(f.imds, target, &[("Metadata", "True")]).status, 200);
    assert_eq!(get(f.imds, target, &[("metadata", "TRUE")]).status, 200);
    let r = get(
        f.imds,
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=x",
        &[],
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_request");
    assert_eq!(
        request(f.imds, "POST", target, &[MD], b"").status,
        405,
        "only GET"
    );
}

#[test]
fn imds_rejects_x_forwarded_for() {
    let f = Fixture::start();
    let r = get(
        f.imds,
        "/metadata/instance?api-version=2021-08-01",
        &[MD, ("X-Forwarded-For", "10.0.0.9")],
    );
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]
        .as_str()
        .is_some_and(|e| e.starts_with("Bad request.")));
    let r = get(
        f.imds,
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net",
        &[MD, ("x-forwarded-for", "1.2.3.4")],
    );
    assert_eq!(r.status, 400);
}

#[test]
fn imds_api_version_and_versions() {
    let f = Fixture::start();
    let r = get(f.imds, "/metadata/instance", &[MD]);
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().is_some_and(
        |e| e.starts_with("Bad request. api-version was not specified in the request.")
    ));
    let r = get(f.imds, "/metadata/versions", &[MD]);
    assert_eq!(r.status, 200);
    let versions = r.json()["apiVersions"]
        .as_array()
        .expect("apiVersions")
        .clone();
    assert!(versions.contains(&Value::from("2018-02-01")));
    assert!(versions.contains(&Value::from("2021-08-01")));
    assert_eq!(
        get(f.imds, "/metadata/nothing?api-version=2021-08-01", &[MD]).status,
        404
    );
    assert_eq!(get(f.imds, "/other", &[MD]).status, 404);
}

#[test]
fn imds_token_shape() {
    let f = Fixture::start();
    let forms = [
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com",
        "/metadata/identity/oauth2/token/?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com",
    ];
    for target in forms {
        let r = get(f.imds, target, &[MD]);
        assert_eq!(r.status, 200, "{target}");
        let t = r.json();
        for key in [
            "access_token",
            "refresh_token",
            "expires_in",
            "expires_on",
            "not_before",
            "resource",
            "token_type",
        ] {
            assert!(t[key].is_string(), "{key} is a string in {t}");
        }
        assert_eq!(t["resource"], "https://management.azure.com");
        assert_eq!(t["token_type"], "Bearer");
        assert_eq!(t["expires_in"], "3599");
        assert_eq!(t["refresh_token"], "");
        let on: u64 = t["expires_on"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("expires_on");
        let nb: u64 = t["not_before"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("not_before");
        assert_eq!(on - nb, 3599);
        assert_eq!(
            t["access_token"].as_str().map(|s| s.split('.').count()),
            Some(3),
            "JWT-shaped"
        );
    }
    let r = get(
        f.imds,
        "/metadata/identity/oauth2/token?api-version=2018-02-01",
        &[MD],
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_request");
    assert!(r.json()["error_description"].is_string());
}

fn all_primitives_are_strings(v: &Value) -> bool {
    match v {
        Value::String(_) => true,
        Value::Array(a) => a.iter().all(all_primitives_are_strings),
        Value::Object(o) => o.values().all(all_primitives_are_strings),
        _ => false,
    }
}

#[test]
fn imds_instance_routes() {
    let f = Fixture::start();
    let r = get(
        f.imds,
        "/metadata/instance?api-version=2021-08-01&extended=true",
        &[MD],
    );
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert!(all_primitives_are_strings(&doc));
    for key in [
        "location",
        "name",
        "vmId",
        "vmSize",
        "osType",
        "resourceGroupName",
        "subscriptionId",
        "tags",
    ] {
        assert!(doc["compute"][key].is_string(), "compute.{key}");
    }
    let r = get(
        f.imds,
        "/metadata/instance/compute?api-version=2018-02-01",
        &[("Metadata", "True")],
    );
    assert_eq!(r.json()["vmId"], doc["compute"]["vmId"]);
    let r = get(
        f.imds,
        "/metadata/instance/compute/vmId?api-version=2021-08-01&format=text",
        &[MD],
    );
    assert_eq!(r.text(), doc["compute"]["vmId"].as_str().expect("vmId"));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    let r = get(
        f.imds,
        "/metadata/instance/network/interface/0/ipv4/ipAddress/0/privateIpAddress?api-version=2021-08-01&format=text",
        &[MD],
    );
    assert_eq!(r.text(), "10.0.0.4");
    let r = get(
        f.imds,
        "/metadata/instance?api-version=2021-08-01&format=text",
        &[MD],
    );
    assert_eq!(r.text(), "compute/\nnetwork/");
    for missing in ["compute/nope", "network/interface/7", "compute/vmId/deeper"] {
        let target = format!("/metadata/instance/{missing}?api-version=2021-08-01");
        assert_eq!(get(f.imds, &target, &[MD]).status, 404, "{missing}");
    }
}

fn unescape(xml: &str) -> String {
    xml.replace("&amp;", "&")
}

fn element<'a>(xml: &'a str, name: &str) -> &'a str {
    let open = format!("<{name}>");
    let start = xml.find(&open).expect("element") + open.len();
    let end = xml[start..].find(&format!("</{name}>")).expect("close") + start;
    &xml[start..end]
}

#[test]
fn wireserver_versions_goal_state_and_configs() {
    let f = Fixture::start();
    let wire = [
        ("x-ms-version", "2012-11-30"),
        ("x-ms-agent-name", "WALinuxAgent"),
    ];
    let r = get(f.ws, "/?comp=versions", &wire);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/xml"));
    assert!(r.header("content-length").is_some());
    assert!(r.header("x-ms-azure-host-date").is_some());
    assert!(element(&r.text(), "Preferred").contains("<Version>2012-11-30</Version>"));

    for target in ["/machine/?comp=goalstate", "/machine?comp=goalstate"] {
        let r = get(f.ws, target, &wire);
        assert_eq!(r.status, 200, "{target}");
        let gs = r.text();
        assert_eq!(element(&gs, "Incarnation"), "1");
        assert_eq!(element(&gs, "ExpectedState"), "Started");
        assert!(!element(&gs, "ContainerId").is_empty());
        assert!(!element(&gs, "InstanceId").is_empty());
        assert!(!gs.contains("<Certificates>"));
        for doc in [
            "HostingEnvironmentConfig",
            "SharedConfig",
            "ExtensionsConfig",
            "FullConfig",
        ] {
            let url = unescape(element(&gs, doc));
            let prefix = format!("http://{}/machine/", f.ws);
            let target = url.strip_prefix(&prefix).map(|t| format!("/machine/{t}"));
            let target = target.unwrap_or_else(|| panic!("{doc} URL {url} is on the stand-in"));
            let r = get(f.ws, &target, &wire);
            assert_eq!(r.status, 200, "{doc}");
            assert!(r.text().contains("goalStateIncarnation=\"1\""), "{doc}");
            if doc == "ExtensionsConfig" {
                for part in [
                    "<GAFamilies",
                    "<Plugins",
                    "<StatusUploadBlob statusBlobType=\"BlockBlob\">",
                    "<InVMGoalStateMetaData",
                ] {
                    assert!(r.text().contains(part), "{part}");
                }
            }
            let stale = target.replace("incarnation=1", "incarnation=0");
            assert_eq!(get(f.ws, &stale, &wire).status, 410, "{doc} stale");
        }
    }

    let xml = [("Content-Type", "text/xml; charset=utf-8")];
    let health = b"<Health><GoalStateIncarnation>1</GoalStateIncarnation></Health>";
    for (target, status) in [
        ("/machine?comp=health", 200),
        ("/machine/?comp=health", 200),
        ("/machine?comp=roleProperties", 202),
        ("/machine?comp=telemetrydata", 200),
        ("/machine/?comp=telemetrydata", 200),
        ("/HealthService", 200),
    ] {
        let r = request(f.ws, "POST", target, &xml, health);
        assert_eq!(r.status, status, "{target}");
        assert!(r.header("content-type").is_some() && r.header("content-length").is_some());
    }
    let r = get(f.ws, "/secure-channel/status", &[MD]);
    assert_eq!(r.status, 200);
    let s = r.json();
    assert_eq!(s["authorizationScheme"], "Azure-HMAC-SHA256");
    assert_eq!(s["keyDeliveryMethod"], "http");
    assert_eq!(s["version"], "1.0");
    assert_eq!(s["secureChannelState"], "disabled");
    assert_eq!(get(f.ws, "/nothing", &wire).status, 404);
    assert_eq!(
        get(f.ws, "/machine?comp=health", &wire).status,
        404,
        "GET health"
    );
    // An absolute-form target (as through an HTTP proxy) routes the same.
    let abs = format!("http://{}/machine/?comp=goalstate", f.ws);
    assert_eq!(get(f.ws, &abs, &wire).status, 200);
}

#[test]
fn hostga_vm_settings_etag() {
    let f = Fixture::start();
    let hdrs = [
        ("x-ms-version", "2015-09-01"),
        ("x-ms-containerid", "c"),
        ("x-ms-host-config-name", "n"),
    ];
    let r = get(f.hg, "/versions", &[]);
    assert!(r.text().contains("2015-09-01"));
    assert_eq!(get(f.hg, "/health", &[]).status, 200);
    let r = get(f.hg, "/vmSettings", &hdrs);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["hostGAPluginVersion"], "1.0.8.133");
    let etag = r.header("etag").expect("ETag").to_string();
    let mut with_tag = hdrs.to_vec();
    with_tag.push(("if-none-match", &etag));
    let r = get(f.hg, "/vmSettings", &with_tag);
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    with_tag.pop();
    with_tag.push(("if-none-match", "other"));
    assert_eq!(get(f.hg, "/vmSettings", &with_tag).status, 200);
    assert_eq!(get(f.hg, "/nothing", &[]).status, 404);
}

#[test]
fn hostga_artifacts_and_uploads() {
    let f = Fixture::start();
    let check = |r: &Reply, len: usize| {
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), len);
        assert!(r
            .body
            .iter()
            .enumerate()
            .all(|(i, b)| *b == artifact_byte(i as u64)));
    };
    let loc = "https://store.blob.core.windows.net/ext/pkg.zip?sv=1&size=3000000";
    let r = get(
        f.hg,
        "/extensionArtifact",
        &[("x-ms-artifact-location", loc)],
    );
    check(&r, 3_000_000);
    check(&get(f.hg, "/extensionArtifact?size=70000", &[]), 70_000);
    check(&get(f.hg, "/extensionArtifact", &[]), 1024);

    let r = request(
        f.hg,
        "PUT",
        "/status",
        &[("Content-Type", "application/json")],
        br#"{"requestUri":"u","headers":[],"content":""}"#,
    );
    assert_eq!(r.status, 200);

    // A chunked upload behind Expect: 100-continue, as curl sends large bodies.
    let mut stream = TcpStream::connect(f.hg).expect("connect");
    stream
        .write_all(b"PUT /vmAgentLog HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .expect("head");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("interim");
    assert!(line.starts_with("HTTP/1.1 100"), "{line}");
    reader.read_line(&mut line).expect("blank");
    let chunk = vec![b'z'; 100_000];
    for _ in 0..3 {
        stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .expect("size");
        stream.write_all(&chunk).expect("chunk");
        stream.write_all(b"\r\n").expect("crlf");
    }
    stream.write_all(b"0\r\n\r\n").expect("last chunk");
    assert_eq!(read_reply(&mut reader).status, 200);
    let rec = f.records();
    let upload = rec
        .iter()
        .find(|r| r.target == "/vmAgentLog")
        .expect("recorded");
    assert_eq!(upload.body_len, 300_000);
    assert_eq!(upload.endpoint, Endpoint::HostGaPlugin);
}

#[test]
fn records_what_arrived() {
    let f = Fixture::start();
    assert!(f.records().is_empty());
    let r = get(
        f.imds,
        "/metadata/instance/compute?api-version=2018-02-01",
        &[
            ("Metadata", "True"),
            ("X-Custom-Case", "a"),
            ("x-custom-case", "b"),
        ],
    );
    assert_eq!(r.status, 200);
    let r = get(f.imds, "/metadata/instance?api-version=2021-08-01", &[]);
    assert_eq!(r.status, 400);
    request(f.ws, "POST", "/machine?comp=health", &[], b"12345");

    let rec = f.records();
    assert_eq!(rec.len(), 3, "{rec:?}");
    let first = &rec[0];
    assert_eq!(first.endpoint, Endpoint::Imds);
    assert_eq!(first.method, "GET");
    assert_eq!(
        first.target,
        "/metadata/instance/compute?api-version=2018-02-01"
    );
    assert_eq!(first.status, 200);
    assert!(first.peer.starts_with("127.0.0.1:"));
    let names: Vec<&str> = first.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "Host",
            "Metadata",
            "X-Custom-Case",
            "x-custom-case",
            "Connection"
        ]
    );
    assert_eq!(first.header("x-custom-case"), Some("a"));
    assert_eq!(first.header("METADATA"), Some("True"));
    assert_eq!(rec[1].status, 400, "rejected requests are recorded too");
    assert_eq!(rec[2].endpoint, Endpoint::WireServer);
    assert_eq!(rec[2].body_len, 5);
    assert_eq!(rec[2].status, 200);
}

#[test]
fn keep_alive_and_pipelining() {
    let f = Fixture::start();
    let mut stream = TcpStream::connect(f.imds).expect("connect");
    let one = "GET /metadata/versions HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n\r\n";
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    stream.write_all(one.as_bytes()).expect("first");
    assert_eq!(read_reply(&mut reader).status, 200);
    stream.write_all(one.as_bytes()).expect("second");
    assert_eq!(read_reply(&mut reader).status, 200);
    // Two pipelined, the last one closing.
    let two =
        format!("{one}GET /metadata/versions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(two.as_bytes()).expect("pipelined");
    assert_eq!(read_reply(&mut reader).status, 200);
    let last = read_reply(&mut reader);
    assert_eq!(last.status, 400);
    assert_eq!(last.header("connection"), Some("close"));
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).expect("closed");
    assert!(rest.is_empty());
    assert_eq!(f.records().len(), 4);
}

#[test]
fn malformed_requests_get_400() {
    let f = Fixture::start();
    let r = raw(f.ws, b"NOT A REQUEST\r\n\r\n");
    assert_eq!(r.status, 400);
    let r = raw(
        f.ws,
        b"POST /HealthService HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert_eq!(r.status, 400);
    let rec = f.records();
    assert_eq!(rec.len(), 2);
    assert!(rec.iter().all(|r| r.status == 400));
    assert_eq!(rec[1].target, "/HealthService");
}

#[test]
fn serve_runs_until_shutdown_and_reports_bind_errors() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let [ws, hg, imds] = free_addrs();
    runtime.block_on(async {
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(StandinConfig::new(ws, hg, imds), async {
            let _ = rx.await;
        }));
        // Wait until it answers, from a blocking thread.
        let reply = tokio::task::spawn_blocking(move || {
            for _ in 0..200 {
                if TcpStream::connect(hg).is_ok() {
                    return get(hg, "/health", &[]).status;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            0
        })
        .await
        .expect("client");
        assert_eq!(reply, 200);
        // A second stand-in on the same addresses cannot bind.
        let err = serve(StandinConfig::new(ws, hg, imds), async {})
            .await
            .expect_err("addresses in use");
        assert!(format!("{err:#}").contains("wireserver"), "{err:#}");
        tx.send(()).expect("shutdown");
        server.await.expect("join").expect("clean exit");
    });
    assert!(TcpStream::connect(ws).is_err(), "listeners closed");
}

#[test]
fn cli_embeds_as_subcommand() {
    use clap::Parser;
    #[derive(Debug, clap::Parser)]
    enum Cli {
        Standin(StandinArgs),
    }
    let Cli::Standin(args) = Cli::try_parse_from([
        "fastproxy",
        "standin",
        "--imds",
        "127.100.0.254:80",
        "--ready-file",
        "/tmp/r",
    ])
    .expect("parse");
    assert_eq!(args.ready_file, Some(PathBuf::from("/tmp/r")));
    let config = args.into_config();
    assert_eq!(config.wireserver, "168.63.129.16:80".parse().expect("addr"));
    assert_eq!(config.hostga, "168.63.129.16:32526".parse().expect("addr"));
    assert_eq!(config.imds, "127.100.0.254:80".parse().expect("addr"));
    assert_eq!(config.record, None);
    assert_eq!(config.secure_channel, SecureChannel::default());
    assert_eq!(config.control, None);

    let Cli::Standin(args) = Cli::try_parse_from([
        "fastproxy",
        "standin",
        "--secure-channel",
        "WireServerAndImds",
        "--status-version",
        "2.0",
        "--control",
        "/tmp/c.json",
        "--key-guid",
        "g",
        "--key-hex",
        "00",
    ])
    .expect("parse");
    let config = args.into_config();
    assert_eq!(
        config.secure_channel,
        SecureChannel {
            state: SecureChannelState::WireServerAndImds,
            version: StatusVersion::V2,
            key_guid: Some("g".into()),
            key_hex: Some("00".into()),
            incarnation: 1,
        }
    );
    assert_eq!(config.control, Some(PathBuf::from("/tmp/c.json")));
    // A bad key is refused at start.
    let err = spawn(config).expect_err("a 1-byte key");
    assert!(format!("{err:#}").contains("64 hex digits"), "{err:#}");
    for bad in [["--secure-channel", "imds"], ["--status-version", "3.0"]] {
        let argv = ["fastproxy", "standin", bad[0], bad[1]];
        assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
    }
}

#[test]
fn old_records_still_read() {
    let line = r#"{"endpoint":"Imds","peer":"127.0.0.1:1","method":"GET","target":"/","headers":[["Host","x"]],"body_len":0,"status":200}"#;
    let rec: RecordedRequest = serde_json::from_str(line).expect("old record");
    assert_eq!(rec.signature, None);
    let mut rec = rec;
    rec.signature = Some(SignatureCheck::NotRequired);
    let text = serde_json::to_string(&rec).expect("encode");
    assert!(text.contains(r#""signature":"not-required""#), "{text}");
    assert_eq!(
        serde_json::from_str::<RecordedRequest>(&text).expect("decode"),
        rec
    );
}
