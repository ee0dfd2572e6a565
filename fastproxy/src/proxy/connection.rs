//! One client connection, request by request.
//!
//! Life of a request: read the head (10 s deadline) → parse strictly → refuse early (no caller
//! record 421, not a guarded endpoint 421, denied 403) → write the re-serialised head upstream
//! → forward the body as it arrives → read the response head (30 s) → write the client's head
//! (with the marker) → relay the body → access log. Nothing of a request that fails to parse
//! reaches the upstream; a response that cannot be framed becomes a 502 before any byte of it
//! reaches the client, and a failure after that closes the client connection mid-body so the
//! client never takes a truncated response for a complete one.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddrV4;
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::watch;
use tokio::time::timeout_at;
use tracing::{debug, info};

use super::io::{read_append, write_all, write_range, ProxyStream, SpliceError};
use super::limits::ConnectionLimits;
use crate::config::ProxySettings;
use crate::http::head::ALLOW_HEADER;
use crate::http::rewrite::{
    forwarded_request_fields, write_client_response, write_local_response, write_upstream_request,
};
use crate::http::{parse_request, parse_response, BodyKind, ChunkedDecoder, HttpError};
use crate::identity::enrich::Enricher;
use crate::identity::kernel::CallerLookup;
use crate::identity::CallerRecord;
use crate::keykeeper::keeper::ChannelState;
use crate::policy::enriched::EnrichedCaller;
use crate::policy::{self, Decision};
use crate::signing::{string_to_sign, SigningKey};
use crate::telemetry::summary::{Summaries, SummaryKey};
use crate::telemetry::{error_chain, ACCESS_TARGET, SUMMARY_TARGET};
use crate::upstream::connect::ConnectError;
use crate::upstream::{EndpointTable, GuardedEndpoint};
use arc_swap::ArcSwap;

/// What every worker shares with the key keeper and the main thread.
#[derive(Debug, Clone)]
pub struct Shared {
    pub endpoints: Arc<ArcSwap<EndpointTable>>,
    pub channel: Arc<ChannelState>,
    pub provisioning: Arc<crate::status::Provisioning>,
    /// The compiled advanced rules now in force (swapped on reload).
    pub policy: Arc<ArcSwap<crate::policy::CompiledPolicy>>,
    /// Each worker's connection summaries and open connections, published every few
    /// seconds for the status report (the request path never takes this lock).
    pub reports: Arc<std::sync::Mutex<Vec<WorkerReport>>>,
    /// The latest status report, served as `/gpa-aggregated-status` to root callers.
    pub status_json: Arc<ArcSwap<String>>,
    /// Telemetry to WireServer (connection summaries), when on.
    pub telemetry: Option<std::sync::mpsc::Sender<crate::telemetry::events::TelemetryEvent>>,
}

/// What one worker last published.
#[derive(Debug, Clone, Default)]
pub struct WorkerReport {
    pub summaries: Vec<crate::telemetry::summary::SummaryEntry>,
    pub connections: usize,
}

/// Largest single read of a body.
const RELAY_CHUNK: usize = 64 * 1024;
/// How long a refused client gets to finish sending before the socket closes (closing with
/// unread input would reset the connection and destroy the error response in flight).
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 256 * 1024;

/// What every connection of a worker shares.
pub(crate) struct WorkerCtx<S> {
    settings: ProxySettings,
    lookup: Arc<CallerLookup>,
    limits: Arc<ConnectionLimits>,
    /// The endpoints and their modes now (the key keeper swaps in new modes).
    endpoints: Arc<ArcSwap<EndpointTable>>,
    /// The latched key and the host clock.
    channel: Arc<ChannelState>,
    /// Provisioning state, served as `GET /provision`.
    provisioning: Arc<crate::status::Provisioning>,
    /// The advanced rules in force.
    policy: Arc<ArcSwap<crate::policy::CompiledPolicy>>,
    /// The latest status report.
    status_json: Arc<ArcSwap<String>>,
    telemetry: Option<std::sync::mpsc::Sender<crate::telemetry::events::TelemetryEvent>>,
    /// Caller facts from /proc and NSS, cached per core.
    enricher: RefCell<Enricher>,
    /// Connection summaries of this core.
    summaries: RefCell<Summaries>,
    /// The date header of the current second, made once per second per core.
    date: RefCell<(u64, String)>,
    local: SocketAddrV4,
    /// Idle upstream connections of this core, per endpoint (no lock: one thread).
    pool: RefCell<Vec<(SocketAddrV4, Vec<Idle<S>>)>>,
    /// Relay buffers of this core not in use: a connection borrows one while it moves a body.
    buffers: RefCell<Vec<Vec<u8>>>,
    /// Connections open on this core.
    active: Cell<usize>,
    /// Turns true when the proxy shuts down.
    shutdown: watch::Receiver<bool>,
}

/// An upstream connection waiting in the pool.
struct Idle<S> {
    stream: S,
    since: Instant,
}

/// How long an idle upstream connection is kept; servers close idle connections after a few
/// seconds, and a connection they closed is only found out by the next request.
const POOL_IDLE: Duration = Duration::from_secs(4);
/// Idle connections kept per endpoint per core.
const POOL_PER_ENDPOINT: usize = 32;

impl<S: ProxyStream> WorkerCtx<S> {
    /// A usable idle connection to `addr`, newest first; stale ones are closed on the way.
    fn take_idle(&self, addr: SocketAddrV4) -> Option<S> {
        let mut pool = self.pool.borrow_mut();
        let idle = pool.iter_mut().find(|(a, _)| *a == addr).map(|(_, v)| v)?;
        while let Some(conn) = idle.pop() {
            if conn.since.elapsed() < POOL_IDLE
                && !crate::sys::idle_connection_unusable(conn.stream.as_raw_fd())
            {
                return Some(conn.stream);
            }
            let _ = conn.stream.shutdown(std::net::Shutdown::Both);
        }
        None
    }

    fn put_idle(&self, addr: SocketAddrV4, stream: S) {
        let mut pool = self.pool.borrow_mut();
        let idle = match pool.iter().position(|(a, _)| *a == addr) {
            Some(i) => &mut pool[i].1,
            None => {
                pool.push((addr, Vec::new()));
                &mut pool.last_mut().expect("just pushed").1
            }
        };
        if idle.len() >= POOL_PER_ENDPOINT {
            let oldest = idle.remove(0);
            let _ = oldest.stream.shutdown(std::net::Shutdown::Both);
        }
        idle.push(Idle {
            stream,
            since: Instant::now(),
        });
    }
}

impl<S> WorkerCtx<S> {
    /// Connections open on this core.
    pub(crate) fn active(&self) -> &Cell<usize> {
        &self.active
    }

    /// This worker's summaries and connection count, for the status report.
    pub(crate) fn report(&self) -> WorkerReport {
        let now = self
            .channel
            .clock
            .now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut summaries = self.summaries.borrow_mut();
        summaries.prune(now);
        WorkerReport {
            summaries: summaries.snapshot(),
            connections: self.active.get(),
        }
    }

    fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// `x-ms-azure-host-date` for now: host time, formatted once per second.
    fn with_date<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        let now = self.channel.clock.now();
        let second = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut cached = self.date.borrow_mut();
        if cached.0 != second || cached.1.is_empty() {
            *cached = (second, httpdate::fmt_http_date(now));
        }
        f(&cached.1)
    }

    /// A relay buffer from the core's pool (or a new one).
    fn take_buffer(&self) -> Vec<u8> {
        self.buffers
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(RELAY_CHUNK))
    }

    /// Give a relay buffer back; the pool keeps a bounded number.
    fn give_buffer(&self, mut buffer: Vec<u8>) {
        const POOLED_BUFFERS: usize = 64;
        let mut pool = self.buffers.borrow_mut();
        if buffer.capacity() >= RELAY_CHUNK && pool.len() < POOLED_BUFFERS {
            buffer.clear();
            pool.push(buffer);
        }
    }

    pub(crate) fn new(
        settings: ProxySettings,
        lookup: Arc<CallerLookup>,
        limits: Arc<ConnectionLimits>,
        shared: &Shared,
        local: SocketAddrV4,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        WorkerCtx {
            settings,
            lookup,
            limits,
            endpoints: Arc::clone(&shared.endpoints),
            channel: Arc::clone(&shared.channel),
            provisioning: Arc::clone(&shared.provisioning),
            policy: Arc::clone(&shared.policy),
            status_json: Arc::clone(&shared.status_json),
            telemetry: shared.telemetry.clone(),
            enricher: RefCell::new(Enricher::default()),
            summaries: RefCell::new(Summaries::default()),
            date: RefCell::new((0, String::new())),
            local,
            pool: RefCell::new(Vec::new()),
            buffers: RefCell::new(Vec::new()),
            active: Cell::new(0),
            shutdown,
        }
    }
}

/// Everything that ends an exchange other than success.
#[derive(Debug, Error)]
pub(crate) enum ProxyError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("the connection was not redirected by the kernel (no caller record)")]
    NoCallerRecord,
    #[error("{0} is not a guarded endpoint")]
    NotGuarded(SocketAddrV4),
    #[error("denied by {0}")]
    Denied(&'static str),
    #[error("request head not complete within {0:?}")]
    HeaderTimeout(Duration),
    #[error("upstream connect")]
    Connect(#[from] ConnectError),
    #[error("upstream {context}")]
    UpstreamIo {
        context: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("upstream closed the connection before a complete response")]
    UpstreamClosed,
    #[error("no response head from upstream within {0:?}")]
    UpstreamTimeout(Duration),
    #[error("client went away: {0}")]
    ClientGone(&'static str),
    #[error("connection limit reached (in all, or for this uid)")]
    TooManyConnections,
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(u64),
    #[error("a signed request needs a Content-Length")]
    LengthRequired,
}

/// The one mapping from an error to what the client is told: status and a short reason.
/// The log gets the whole error; the client only this.
pub(crate) fn to_response(err: &ProxyError) -> (u16, &'static str) {
    match err {
        ProxyError::Http(e) => (
            e.status(),
            match e {
                HttpError::MethodNotAllowed(_) => "method not allowed",
                HttpError::Traversal => "path traversal refused",
                HttpError::RequestLineTooLong(_) => "request line too long",
                HttpError::HeadTooLarge(_) | HttpError::TooManyHeaders(_) => {
                    "request head too large"
                }
                HttpError::BadResponse(_) => "bad response from upstream",
                HttpError::Malformed(_) | HttpError::Framing(_) => "malformed request",
            },
        ),
        ProxyError::NoCallerRecord => (421, "connection not redirected by fastproxy"),
        ProxyError::NotGuarded(_) => (421, "not a guarded endpoint"),
        ProxyError::Denied(_) => (403, "forbidden by policy"),
        ProxyError::HeaderTimeout(_) => (408, "request head timeout"),
        ProxyError::Connect(ConnectError::TimedOut(_)) => (504, "upstream connect timeout"),
        ProxyError::Connect(_) | ProxyError::UpstreamIo { .. } | ProxyError::UpstreamClosed => {
            (502, "upstream unavailable")
        }
        ProxyError::UpstreamTimeout(_) => (504, "upstream response timeout"),
        ProxyError::ClientGone(_) => (400, "client went away"),
        ProxyError::TooManyConnections => (503, "too many connections"),
        ProxyError::BodyTooLarge(_) => (413, "request body too large"),
        ProxyError::LengthRequired => (411, "signed requests need a Content-Length"),
    }
}

/// A parsed request, reduced to what the exchange needs once the head's borrow ends.
struct Plan {
    head_len: usize,
    method: Range<usize>,
    path: Range<usize>,
    body: BodyKind,
    keep_alive: bool,
    expect_continue: bool,
    head_request: bool,
    /// RFC 9110 9.2.2: safe to send again when a reused connection fails before answering.
    idempotent: bool,
    endpoint: Option<GuardedEndpoint>,
    decision: Option<Decision>,
    /// Why the rules refused (or audited) it, naming privilege and identity.
    explanation: Option<String>,
    /// Set when the request is refused before anything is forwarded.
    refusal: Option<ProxyError>,
    /// A request for the proxy itself (SPEC-GPA.md section 7), answered locally.
    local: Option<LocalRoute>,
    /// The request is signed: its whole body is read before the head goes upstream.
    signed_pending: bool,
    /// Largest body this request may carry (100 KB, or 100 MB for skip-signature requests).
    body_limit: u64,
    started: Instant,
}

/// Paths the proxy answers itself, on connections made to it directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LocalRoute {
    Provision,
    /// The status report, for root callers.
    AggregatedStatus,
}

/// Body limits (SPEC-GPA.md section 3): skip-signature requests may carry 100 MB.
const BODY_LIMIT: u64 = 100 * 1024;
const SKIP_SIGNATURE_BODY_LIMIT: u64 = 100 * 1024 * 1024;

/// `PUT /vmAgentLog` and `POST /machine/?comp=telemetrydata`, compared lower-cased.
fn is_skip_signature(method: &str, target: &str) -> bool {
    (method == "PUT" && target.eq_ignore_ascii_case("/vmAgentLog"))
        || (method == "POST" && target.eq_ignore_ascii_case("/machine/?comp=telemetrydata"))
}

/// Write the head that goes upstream: the re-serialised request, the claims and date headers,
/// and, with a key, the signature over exactly those headers and `body`.
fn build_upstream_head<S>(
    out: &mut Vec<u8>,
    head: &crate::http::RequestHead<'_>,
    caller: &CallerRecord,
    key: Option<&SigningKey>,
    body: &[u8],
    ctx: &WorkerCtx<S>,
) {
    out.clear();
    let claims = policy::claims_header(caller);
    ctx.with_date(|date| {
        let Some(key) = key else {
            write_upstream_request(
                out,
                head,
                &[
                    ("x-ms-azure-host-claims", claims.as_bytes()),
                    ("x-ms-azure-host-date", date.as_bytes()),
                ],
            );
            return;
        };
        let added: [(&str, &[u8]); 2] = [
            ("x-ms-azure-host-claims", claims.as_bytes()),
            ("x-ms-azure-host-date", date.as_bytes()),
        ];
        let fields = forwarded_request_fields(head)
            .map(|f| (f.name, f.value))
            .chain(added.iter().copied());
        let mut input = Vec::with_capacity(512 + body.len());
        string_to_sign(
            &mut input,
            head.method,
            body,
            fields,
            head.path(),
            head.query(),
        );
        let mut authorization = String::with_capacity(128);
        key.authorization(&input, &mut authorization);
        write_upstream_request(
            out,
            head,
            &[
                added[0],
                added[1],
                ("x-ms-azure-host-authorization", authorization.as_bytes()),
            ],
        );
    });
}

/// How an exchange ended, for the access log and the connection's fate.
struct Ending {
    status: u16,
    /// The client connection must close after this exchange.
    close: bool,
    /// Where the next request starts in the input buffer.
    consumed: usize,
}

/// An exchange that failed: `answered` says whether the client already got response bytes
/// (then no error response can be sent, only a close).
struct Failure {
    error: ProxyError,
    answered: bool,
}

impl From<ProxyError> for Failure {
    fn from(error: ProxyError) -> Self {
        Failure {
            error,
            answered: false,
        }
    }
}

struct Upstream<S> {
    stream: S,
    addr: SocketAddrV4,
}

fn stream_of<S>(upstream: &Option<Upstream<S>>) -> Result<&S, ProxyError> {
    upstream
        .as_ref()
        .map(|u| &u.stream)
        .ok_or(ProxyError::UpstreamClosed)
}

/// One step of reading a response head.
enum HeadStep {
    More,
    Interim(usize),
    Final(FinalHead),
}

/// A final response head, parsed and re-serialised into `reply`.
#[derive(Debug, Clone, Copy)]
struct FinalHead {
    status: u16,
    body: BodyKind,
    /// The upstream connection may carry another request.
    keep: bool,
    head_len: usize,
    /// The client connection closes after this response.
    close: bool,
}

struct Connection<S> {
    client: S,
    peer: SocketAddrV4,
    caller: Option<CallerRecord>,
    ctx: Rc<WorkerCtx<S>>,
    /// Client bytes: the current head, then whatever followed it.
    input: Vec<u8>,
    /// What goes upstream: the re-serialised head, and the body when it is buffered whole.
    out: Vec<u8>,
    /// The response head written to the client.
    reply: Vec<u8>,
    /// Body bytes in transit.
    relay: Vec<u8>,
    /// Upstream bytes: the response head, then whatever followed it.
    response: Vec<u8>,
    upstream: Option<Upstream<S>>,
    /// The pipe of large-body splices, made on first use.
    pipe: Option<Rc<crate::sys::Pipe>>,
    /// Body bytes of the current exchange moved by splice (for the access log).
    spliced: u64,
    /// Scratch for the canonical form of a request's path and query (policy matching).
    canonical: crate::policy::CanonicalRequest,
}

/// Serve one accepted connection until it closes.
pub(crate) async fn serve<S: ProxyStream>(client: S, peer: SocketAddrV4, ctx: Rc<WorkerCtx<S>>) {
    let _ = client.set_nodelay(true);
    let caller = ctx.lookup.lookup(&client, ctx.local, peer);
    let permit = ctx.limits.admit(caller.map(|c| c.uid));
    ctx.active.set(ctx.active.get() + 1);
    let counted = Rc::clone(&ctx);
    let mut conn = Connection {
        client,
        peer,
        caller,
        ctx,
        input: Vec::with_capacity(8 * 1024),
        out: Vec::with_capacity(2 * 1024),
        reply: Vec::with_capacity(1024),
        relay: Vec::new(),
        response: Vec::with_capacity(8 * 1024),
        upstream: None,
        pipe: None,
        spliced: 0,
        canonical: crate::policy::CanonicalRequest::new(),
    };
    match permit {
        Some(_permit) => conn.run().await,
        None => {
            conn.log_unparsed(503, &ProxyError::TooManyConnections);
            conn.answer_error(&ProxyError::TooManyConnections).await;
        }
    }
    counted.active.set(counted.active.get() - 1);
}

impl<S: ProxyStream> Connection<S> {
    async fn run(mut self) {
        let mut first = true;
        loop {
            let mut plan = match self.next_request(first).await {
                Ok(Some(plan)) => plan,
                Ok(None) => break,
                Err(error) => {
                    let (status, _) = to_response(&error);
                    self.log_unparsed(status, &error);
                    self.answer_error(&error).await;
                    return;
                }
            };
            first = false;
            if let Some(route) = plan.local {
                let body = match route {
                    LocalRoute::Provision => {
                        crate::status::provision_json(&self.ctx.provisioning.get())
                    }
                    LocalRoute::AggregatedStatus => self.ctx.status_json.load().as_ref().clone(),
                };
                self.out.clear();
                crate::http::rewrite::write_local_json(&mut self.out, 200, &body);
                let _ = write_all(&self.client, &mut self.out).await;
                self.log(&plan, 200, None);
                self.abort();
                return;
            }
            if let Some(refusal) = plan.refusal.take() {
                // Refused before anything was forwarded.
                let (status, _) = to_response(&refusal);
                self.log(&plan, status, Some(&refusal));
                self.answer_error(&refusal).await;
                return;
            }
            match self.exchange(&plan).await {
                Ok(ending) => {
                    self.log(&plan, ending.status, None);
                    if ending.close {
                        break;
                    }
                    self.input.drain(..ending.consumed);
                }
                Err(failure) => {
                    let (status, _) = to_response(&failure.error);
                    self.drop_upstream();
                    if failure.answered {
                        self.log(&plan, 0, Some(&failure.error));
                        self.abort();
                    } else {
                        self.log(&plan, status, Some(&failure.error));
                        self.answer_error(&failure.error).await;
                    }
                    return;
                }
            }
        }
        self.release_upstream();
        let _ = self.client.shutdown(std::net::Shutdown::Both);
    }

    /// Read until a complete head is buffered; `None` when the client closed or idled out
    /// between requests.
    async fn next_request(&mut self, first: bool) -> Result<Option<Plan>, ProxyError> {
        let timeouts = self.ctx.settings.timeouts;
        let limit = self.ctx.settings.limits.head + 1;
        let mut deadline = tokio::time::Instant::now()
            + if first || !self.input.is_empty() {
                timeouts.header
            } else {
                timeouts.idle
            };
        loop {
            if !self.input.is_empty() {
                if let Some(plan) = self.try_plan()? {
                    return Ok(Some(plan));
                }
            }
            let was_empty = self.input.is_empty();
            if was_empty && !first && self.ctx.shutting_down() {
                return Ok(None);
            }
            let want = limit.saturating_sub(self.input.len()).max(1);
            let mut stop = self.ctx.shutdown.clone();
            let read = async {
                tokio::select! {
                    r = timeout_at(deadline, read_append(&self.client, &mut self.input, want)) => Some(r),
                    // Between requests a shutdown closes the connection at once.
                    _ = stop.wait_for(|s| *s), if was_empty && !first => None,
                }
            };
            let Some(result) = read.await else {
                return Ok(None);
            };
            match result {
                Err(_) if was_empty => return Ok(None),
                Err(_) => return Err(ProxyError::HeaderTimeout(timeouts.header)),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
                Ok(Ok(_)) if was_empty && !first => {
                    deadline = tokio::time::Instant::now() + timeouts.header;
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Parse the buffered head and decide what to do with it, writing the upstream head into
    /// `out` when the request may pass.
    fn try_plan(&mut self) -> Result<Option<Plan>, ProxyError> {
        let settings = &self.ctx.settings;
        let Some(head) = parse_request(&self.input, &settings.limits)? else {
            return Ok(None);
        };
        let base = self.input.as_ptr() as usize;
        let range = |s: &str| {
            let start = s.as_ptr() as usize - base;
            start..start + s.len()
        };
        let mut plan = Plan {
            head_len: head.head_len,
            method: range(head.method),
            path: range(head.path()),
            body: head.body,
            // While shutting down, every response closes its connection.
            keep_alive: head.keep_alive && !self.ctx.shutting_down(),
            expect_continue: head.expect_continue,
            head_request: head.method == "HEAD",
            idempotent: matches!(head.method, "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE"),
            endpoint: None,
            decision: None,
            refusal: None,
            explanation: None,
            local: None,
            signed_pending: false,
            body_limit: BODY_LIMIT,
            started: Instant::now(),
        };
        // Requests aimed at the proxy itself (a direct connect to its port, recorded by the
        // kernel like any other, or made from outside the guarded cgroups: no record) may only
        // ask for its local paths (SPEC-GPA.md section 7).
        let direct = self.caller.is_none_or(|c| c.original_dst == self.ctx.local);
        if direct {
            let route = match (head.method, head.path()) {
                ("GET", "/provision") => Some(LocalRoute::Provision),
                ("GET", "/gpa-aggregated-status") => Some(LocalRoute::AggregatedStatus),
                _ => None,
            };
            match (route, self.caller) {
                (Some(_), _) if head.field("metadata").is_none() => {
                    return Err(HttpError::Malformed("the Metadata header is required").into());
                }
                (Some(LocalRoute::AggregatedStatus), None) => {
                    plan.refusal = Some(ProxyError::NoCallerRecord);
                }
                (Some(LocalRoute::AggregatedStatus), Some(c)) if !c.is_root() => {
                    plan.refusal = Some(ProxyError::Denied("root only"));
                }
                (Some(route), _) => plan.local = Some(route),
                (None, None) => plan.refusal = Some(ProxyError::NoCallerRecord),
                (None, Some(_)) => {
                    plan.refusal = Some(ProxyError::Denied("aimed at the proxy itself"))
                }
            }
            return Ok(Some(plan));
        }
        let Some(caller) = self.caller else {
            plan.refusal = Some(ProxyError::NoCallerRecord);
            return Ok(Some(plan));
        };
        let endpoints = self.ctx.endpoints.load();
        let Some(endpoint) = endpoints.by_addr(caller.original_dst) else {
            plan.refusal = Some(ProxyError::NotGuarded(caller.original_dst));
            return Ok(Some(plan));
        };
        plan.endpoint = Some(endpoint);
        if head
            .field("host")
            .is_some_and(|host| endpoints.host_names_another(host, &endpoint))
        {
            return Err(HttpError::Malformed("Host names another endpoint").into());
        }
        // The audit trail names the caller's process: read it now, while the caller waits
        // for its answer (cached per process; after the answer the process may be gone).
        let _ = self
            .ctx
            .enricher
            .borrow_mut()
            .process(caller.tgid, caller.start_boottime_ns);
        let skip_signature = is_skip_signature(head.method, head.target);
        let decision = if skip_signature && caller.is_root() {
            // SPEC-GPA.md section 3: a root caller skips rule evaluation for these.
            Decision::Allow("root: skip-signature request")
        } else {
            let rules = self.ctx.policy.load();
            let mut enricher = self.ctx.enricher.borrow_mut();
            let mut facts = EnrichedCaller::new(&caller, &mut enricher);
            let verdict = policy::authorize(
                &rules,
                &endpoint,
                &mut facts,
                head.path(),
                head.query(),
                &mut self.canonical,
            );
            // Refusals and audit findings name the privilege and identity in the log (rare,
            // so the formatting is paid only for them).
            if !verdict.is_allowed() || verdict.is_audit() {
                plan.explanation = Some(verdict.explain(&rules).to_string());
            }
            verdict.decision()
        };
        plan.decision = Some(decision);
        if let Decision::Deny(reason) = decision {
            plan.refusal = Some(ProxyError::Denied(reason.as_str()));
            return Ok(Some(plan));
        }
        if skip_signature {
            plan.body_limit = SKIP_SIGNATURE_BODY_LIMIT;
        }
        if let BodyKind::Length(n) = head.body {
            if n > plan.body_limit {
                plan.refusal = Some(ProxyError::BodyTooLarge(plan.body_limit));
                return Ok(Some(plan));
            }
        }
        let key = if skip_signature {
            None
        } else {
            self.ctx.channel.key.load_full()
        };
        if let Some(key) = key {
            let BodyKind::Length(n) = head.body else {
                // The signature covers the body: a chunked one would have to be buffered
                // and re-framed; signed requests must say their length.
                plan.refusal = Some(ProxyError::LengthRequired);
                return Ok(Some(plan));
            };
            let end = head.head_len + n as usize;
            if self.input.len() < end {
                plan.signed_pending = true;
                return Ok(Some(plan));
            }
            let body = &self.input[head.head_len..end];
            build_upstream_head(&mut self.out, &head, &caller, Some(&key), body, &self.ctx);
        } else {
            build_upstream_head(&mut self.out, &head, &caller, None, b"", &self.ctx);
        }
        Ok(Some(plan))
    }

    /// A signed request whose body had not arrived whole: read it (it is at most the body
    /// limit), then sign and write the upstream head.
    async fn complete_signed_head(&mut self, plan: &Plan) -> Result<(), ProxyError> {
        let BodyKind::Length(n) = plan.body else {
            return Err(ProxyError::LengthRequired);
        };
        let end = plan.head_len + n as usize;
        let idle = self.ctx.settings.timeouts.idle;
        while self.input.len() < end {
            let want = end - self.input.len();
            match tokio::time::timeout(idle, read_append(&self.client, &mut self.input, want)).await
            {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    return Err(ProxyError::ClientGone("in the request body"))
                }
                Ok(Ok(_)) => {}
                Err(_) => return Err(ProxyError::ClientGone("stalled in the request body")),
            }
        }
        let caller = self.caller.ok_or(ProxyError::NoCallerRecord)?;
        let key = self.ctx.channel.key.load_full();
        let head = parse_request(&self.input, &self.ctx.settings.limits)?
            .ok_or(HttpError::Malformed("head vanished"))?;
        let body = &self.input[head.head_len..end];
        build_upstream_head(
            &mut self.out,
            &head,
            &caller,
            key.as_deref(),
            body,
            &self.ctx,
        );
        Ok(())
    }

    async fn exchange(&mut self, plan: &Plan) -> Result<Ending, Failure> {
        self.spliced = 0;
        let ending = self.exchange_inner(plan).await;
        let relay = std::mem::take(&mut self.relay);
        self.ctx.give_buffer(relay);
        ending
    }

    async fn exchange_inner(&mut self, plan: &Plan) -> Result<Ending, Failure> {
        let endpoint = plan.endpoint.ok_or(ProxyError::Denied("no endpoint"))?;
        if plan.expect_continue {
            let mut cont = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
            write_all(&self.client, &mut cont)
                .await
                .map_err(|_| ProxyError::ClientGone("before 100-continue"))?;
        }
        if plan.signed_pending {
            self.complete_signed_head(plan).await?;
        }
        // A body already buffered whole goes out with the head, in one write.
        let buffered_end = match plan.body {
            BodyKind::Length(n) if n <= (self.input.len() - plan.head_len) as u64 => {
                let end = plan.head_len + n as usize;
                self.out.extend_from_slice(&self.input[plan.head_len..end]);
                Some(end)
            }
            _ => None,
        };
        let mut retried = false;
        let (consumed, head) = loop {
            let reused = self.acquire_upstream(endpoint.addr).await?;
            let up = stream_of(&self.upstream)?;
            if let Err(source) = write_all(up, &mut self.out).await {
                self.drop_upstream();
                if reused && !retried {
                    retried = true;
                    continue;
                }
                return Err(ProxyError::UpstreamIo {
                    context: "writing the request head",
                    source,
                }
                .into());
            }
            let consumed = match buffered_end {
                Some(end) => end,
                None => self.forward_request_body(plan).await?,
            };
            match self.read_response_head(plan).await {
                Ok(head) => break (consumed, head),
                // A reused connection the server had already closed: nothing was answered,
                // and the whole request is still in `out`, so an idempotent one goes again.
                Err(ProxyError::UpstreamClosed | ProxyError::UpstreamIo { .. })
                    if reused
                        && !retried
                        && plan.idempotent
                        && buffered_end.is_some()
                        && self.response.is_empty() =>
                {
                    self.drop_upstream();
                    retried = true;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let (status, keep_upstream, close) = self.relay_body(head).await?;
        if !keep_upstream {
            self.drop_upstream();
        } else if close {
            self.release_upstream();
        }
        Ok(Ending {
            status,
            close,
            consumed,
        })
    }

    /// Make `self.upstream` a connection to `addr`: the connection's own, else an idle one of
    /// this core, else a new one. Returns whether it was used before (and may be stale).
    async fn acquire_upstream(&mut self, addr: SocketAddrV4) -> Result<bool, ProxyError> {
        if self.upstream.as_ref().is_some_and(|u| u.addr == addr) {
            return Ok(true);
        }
        self.release_upstream();
        if let Some(stream) = self.ctx.take_idle(addr) {
            self.upstream = Some(Upstream { stream, addr });
            return Ok(true);
        }
        let settings = &self.ctx.settings;
        let stream =
            S::connect_marked(addr, settings.mark, settings.timeouts.upstream_connect).await?;
        self.upstream = Some(Upstream { stream, addr });
        Ok(false)
    }

    /// Hand a clean upstream connection back to the core's pool.
    fn release_upstream(&mut self) {
        if let Some(up) = self.upstream.take() {
            self.ctx.put_idle(up.addr, up.stream);
        }
    }

    /// Forward the request body; returns where the next request starts in `input`.
    async fn forward_request_body(&mut self, plan: &Plan) -> Result<usize, ProxyError> {
        let idle = self.ctx.settings.timeouts.idle;
        let mut pos = plan.head_len;
        let upstream_err = |source| ProxyError::UpstreamIo {
            context: "writing the request body",
            source,
        };
        match plan.body {
            BodyKind::Length(total) => {
                let avail = (self.input.len() - pos) as u64;
                let take = total.min(avail) as usize;
                let up = stream_of(&self.upstream)?;
                write_range(up, &mut self.input, pos..pos + take)
                    .await
                    .map_err(upstream_err)?;
                pos += take;
                let mut remaining = total - take as u64;
                while remaining > 0 {
                    self.relay.clear();
                    let want = remaining.min(RELAY_CHUNK as u64) as usize;
                    let n = self.read_client_body(want, idle).await?;
                    let up = stream_of(&self.upstream)?;
                    write_all(up, &mut self.relay).await.map_err(upstream_err)?;
                    remaining -= n as u64;
                }
            }
            BodyKind::Chunked => {
                let mut decoder = ChunkedDecoder::new(false);
                let used = decoder.advance(&self.input[pos..])?;
                // A chunked body is held to the body limit by its bytes on the wire; past it
                // the upstream connection is dropped with the request incomplete.
                let mut wire = used as u64;
                if wire > plan.body_limit {
                    return Err(ProxyError::BodyTooLarge(plan.body_limit));
                }
                let up = stream_of(&self.upstream)?;
                write_range(up, &mut self.input, pos..pos + used)
                    .await
                    .map_err(upstream_err)?;
                pos += used;
                while !decoder.is_done() {
                    self.relay.clear();
                    self.read_client_body(RELAY_CHUNK, idle).await?;
                    let used = decoder.advance(&self.relay)?;
                    wire += used as u64;
                    if wire > plan.body_limit {
                        return Err(ProxyError::BodyTooLarge(plan.body_limit));
                    }
                    let up = stream_of(&self.upstream)?;
                    write_range(up, &mut self.relay, 0..used)
                        .await
                        .map_err(upstream_err)?;
                    if decoder.is_done() {
                        // Bytes after the body belong to the next (pipelined) request.
                        self.input.truncate(pos);
                        self.input.extend_from_slice(&self.relay[used..]);
                    }
                }
            }
            BodyKind::CloseDelimited => {
                return Err(HttpError::Framing("request without framing").into())
            }
        }
        Ok(pos)
    }

    async fn read_client_body(&mut self, want: usize, idle: Duration) -> Result<usize, ProxyError> {
        if self.relay.capacity() < RELAY_CHUNK {
            self.relay = self.ctx.take_buffer();
        }
        match tokio::time::timeout(idle, read_append(&self.client, &mut self.relay, want)).await {
            Ok(Ok(0)) | Ok(Err(_)) => Err(ProxyError::ClientGone("in the request body")),
            Ok(Ok(n)) => Ok(n),
            Err(_) => Err(ProxyError::ClientGone("stalled in the request body")),
        }
    }

    /// Read the response head (interim responses are dropped) and write the client's head into
    /// `reply`. Nothing reaches the client here.
    async fn read_response_head(&mut self, plan: &Plan) -> Result<FinalHead, ProxyError> {
        let settings = &self.ctx.settings;
        let head_timeout = settings.timeouts.upstream_head;
        let limits = settings.limits;
        let deadline = tokio::time::Instant::now() + head_timeout;
        self.response.clear();
        loop {
            let up = stream_of(&self.upstream)?;
            let n = match timeout_at(
                deadline,
                read_append(up, &mut self.response, limits.head + 1),
            )
            .await
            {
                Err(_) => return Err(ProxyError::UpstreamTimeout(head_timeout)),
                Ok(Err(source)) => {
                    return Err(ProxyError::UpstreamIo {
                        context: "reading the response head",
                        source,
                    })
                }
                Ok(Ok(n)) => n,
            };
            if n == 0 {
                return Err(ProxyError::UpstreamClosed);
            }
            let step = match parse_response(&self.response, plan.head_request, &limits)
                .map_err(ProxyError::from)?
            {
                None => HeadStep::More,
                // The proxy answered any 100-continue itself; interim responses stop here.
                Some(head) if head.is_interim() => HeadStep::Interim(head.head_len),
                Some(head) => {
                    let close = !plan.keep_alive || head.body == BodyKind::CloseDelimited;
                    self.reply.clear();
                    write_client_response(&mut self.reply, &head, close);
                    HeadStep::Final(FinalHead {
                        status: head.status,
                        body: head.body,
                        keep: head.keep_alive,
                        head_len: head.head_len,
                        close,
                    })
                }
            };
            match step {
                HeadStep::More => {}
                HeadStep::Interim(len) => {
                    self.response.drain(..len);
                }
                HeadStep::Final(head) => return Ok(head),
            }
        }
    }

    /// Write the client's head and relay the body. Returns the status, whether the upstream
    /// connection can be kept, and whether the client's must close.
    async fn relay_body(&mut self, head: FinalHead) -> Result<(u16, bool, bool), Failure> {
        let head_timeout = self.ctx.settings.timeouts.upstream_head;
        let FinalHead {
            status,
            body,
            keep: upstream_keep,
            head_len,
            close,
        } = head;
        // Fold what is already buffered of the body into the head's write (one write for a
        // small response), after checking it: a malformed chunk found here is still a 502.
        let pos = head_len;
        let buffered = self.response.len() - pos;
        let (take, mut remaining, mut decoder, mut extra) = match body {
            BodyKind::Length(total) => {
                let take = total.min(buffered as u64) as usize;
                (take, total - take as u64, None, buffered as u64 > total)
            }
            BodyKind::Chunked => {
                let mut decoder = ChunkedDecoder::new(true);
                let used = decoder
                    .advance(&self.response[pos..])
                    .map_err(ProxyError::from)?;
                let extra = decoder.is_done() && used < buffered;
                (used, 0, Some(decoder), extra)
            }
            BodyKind::CloseDelimited => (buffered, 0, None, false),
        };
        self.reply
            .extend_from_slice(&self.response[pos..pos + take]);
        write_all(&self.client, &mut self.reply)
            .await
            .map_err(|_| ProxyError::ClientGone("before the response head"))?;
        let answered = |error| Failure {
            error,
            answered: true,
        };
        match (body, decoder.as_mut()) {
            (BodyKind::Length(_), _) => {
                let threshold = self.ctx.settings.splice_threshold;
                if threshold > 0 && remaining >= threshold {
                    remaining = self
                        .splice_body(remaining, head_timeout)
                        .await
                        .map_err(answered)?;
                }
                while remaining > 0 {
                    let want = remaining.min(RELAY_CHUNK as u64) as usize;
                    let n = self
                        .read_upstream_body(want, head_timeout)
                        .await
                        .map_err(answered)?;
                    if n == 0 {
                        return Err(answered(ProxyError::UpstreamClosed));
                    }
                    self.write_client_relay(0..n).await.map_err(answered)?;
                    remaining -= n as u64;
                }
            }
            (BodyKind::Chunked, Some(decoder)) => {
                while !decoder.is_done() {
                    let n = self
                        .read_upstream_body(RELAY_CHUNK, head_timeout)
                        .await
                        .map_err(answered)?;
                    if n == 0 {
                        return Err(answered(ProxyError::UpstreamClosed));
                    }
                    let used = decoder
                        .advance(&self.relay[..n])
                        .map_err(|e| answered(e.into()))?;
                    extra = decoder.is_done() && used < n;
                    self.write_client_relay(0..used).await.map_err(answered)?;
                }
            }
            (BodyKind::Chunked, None) => {}
            (BodyKind::CloseDelimited, _) => loop {
                let n = self
                    .read_upstream_body(RELAY_CHUNK, head_timeout)
                    .await
                    .map_err(answered)?;
                if n == 0 {
                    break;
                }
                self.write_client_relay(0..n).await.map_err(answered)?;
            },
        }
        Ok((status, upstream_keep && !extra, close))
    }

    /// Relay `remaining` body bytes from upstream to the client with splice (large bodies;
    /// see `--splice-threshold`). Returns what is left to copy: all of it when this runtime
    /// cannot splice, 0 otherwise.
    async fn splice_body(&mut self, mut remaining: u64, wait: Duration) -> Result<u64, ProxyError> {
        const SPLICE_CHUNK: usize = 1024 * 1024;
        let pipe = match &self.pipe {
            Some(pipe) => Rc::clone(pipe),
            None => match crate::sys::Pipe::new(SPLICE_CHUNK) {
                Ok(pipe) => Rc::clone(self.pipe.insert(Rc::new(pipe))),
                Err(_) => return Ok(remaining),
            },
        };
        let up = stream_of(&self.upstream)?;
        while remaining > 0 {
            let want = remaining.min(SPLICE_CHUNK as u64) as usize;
            let moved =
                match tokio::time::timeout(wait, up.splice_to(&self.client, &pipe, want)).await {
                    Err(_) => Err(ProxyError::UpstreamTimeout(wait)),
                    Ok(None) => return Ok(remaining),
                    Ok(Some(Ok(0))) => Err(ProxyError::UpstreamClosed),
                    Ok(Some(Ok(n))) => Ok(n),
                    Ok(Some(Err(SpliceError::Source(source)))) => Err(ProxyError::UpstreamIo {
                        context: "splicing the response body",
                        source,
                    }),
                    Ok(Some(Err(SpliceError::Sink(e)))) => {
                        debug!(error = %e, "client write failed during splice");
                        Err(ProxyError::ClientGone("in the response body"))
                    }
                };
            match moved {
                Ok(n) => {
                    remaining -= n as u64;
                    self.spliced += n as u64;
                }
                Err(e) => {
                    // The pipe may hold bytes of this body: never reuse it.
                    self.pipe = None;
                    return Err(e);
                }
            }
        }
        Ok(0)
    }

    async fn read_upstream_body(
        &mut self,
        want: usize,
        wait: Duration,
    ) -> Result<usize, ProxyError> {
        self.relay.clear();
        if self.relay.capacity() < RELAY_CHUNK {
            self.relay = self.ctx.take_buffer();
        }
        let up = self
            .upstream
            .as_ref()
            .map(|u| &u.stream)
            .ok_or(ProxyError::UpstreamClosed)?;
        match tokio::time::timeout(wait, read_append(up, &mut self.relay, want)).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(source)) => Err(ProxyError::UpstreamIo {
                context: "reading the response body",
                source,
            }),
            Err(_) => Err(ProxyError::UpstreamTimeout(wait)),
        }
    }

    async fn write_client_relay(&mut self, range: Range<usize>) -> Result<(), ProxyError> {
        write_range(&self.client, &mut self.relay, range)
            .await
            .map_err(|_| ProxyError::ClientGone("in the response body"))
    }

    fn drop_upstream(&mut self) {
        if let Some(up) = self.upstream.take() {
            let _ = up.stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Close without a response (the client already has part of one).
    fn abort(&mut self) {
        let _ = self.client.shutdown(std::net::Shutdown::Both);
    }

    /// Answer with the error's status and `Connection: close`, then close gracefully.
    async fn answer_error(&mut self, error: &ProxyError) {
        if matches!(error, ProxyError::ClientGone(_)) {
            self.abort();
            return;
        }
        let (status, reason) = to_response(error);
        let extra: &[(&str, &str)] = match error {
            ProxyError::Http(HttpError::MethodNotAllowed(_)) => &[("Allow", ALLOW_HEADER)],
            _ => &[],
        };
        self.out.clear();
        let body = format!("{reason}\n");
        write_local_response(&mut self.out, status, extra, &body);
        if write_all(&self.client, &mut self.out).await.is_ok() {
            let _ = self.client.shutdown(std::net::Shutdown::Write);
            self.linger().await;
        }
        self.abort();
    }

    /// Drain what the client still sends, briefly, so closing does not reset the connection
    /// before the client has read the response.
    async fn linger(&mut self) {
        let deadline = tokio::time::Instant::now() + LINGER;
        let mut drained = 0;
        while drained < LINGER_BYTES {
            self.relay.clear();
            match timeout_at(
                deadline,
                read_append(&self.client, &mut self.relay, RELAY_CHUNK),
            )
            .await
            {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => break,
            }
        }
    }

    fn log(&self, plan: &Plan, status: u16, error: Option<&ProxyError>) {
        let method = std::str::from_utf8(&self.input[plan.method.clone()]).unwrap_or("?");
        let path = std::str::from_utf8(&self.input[plan.path.clone()]).unwrap_or("?");
        let endpoint = plan.endpoint.map_or("-", |e| e.kind.name());
        let (decision, rule) = match plan.decision {
            Some(Decision::Allow(rule)) => ("allow", rule),
            Some(Decision::Deny(reason)) => ("deny", reason.as_str()),
            None => ("none", "-"),
        };
        let c = self.caller.unwrap_or_default();
        let (process, user) = match self.caller {
            Some(caller) => {
                let mut enricher = self.ctx.enricher.borrow_mut();
                (
                    enricher.process(caller.tgid, caller.start_boottime_ns).ok(),
                    Some(enricher.user(caller.uid, caller.gid)),
                )
            }
            None => (None, None),
        };
        if let (Some(caller), Some(endpoint)) = (self.caller, plan.endpoint) {
            let key = SummaryKey {
                user: user.clone(),
                client_ip: *self.peer.ip(),
                destination: endpoint.addr,
                process: process.clone(),
                status,
            };
            let now = self
                .ctx
                .channel
                .clock
                .now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            if self.ctx.summaries.borrow_mut().record(key, now) {
                info!(
                    target: SUMMARY_TARGET,
                    user = user.as_ref().and_then(|u| u.name.as_deref()).unwrap_or("?"),
                    uid = caller.uid,
                    client_ip = %self.peer.ip(),
                    destination = %endpoint.addr,
                    exe_path = process.as_ref().map_or("?", |p| p.exe_path.as_str()),
                    cmdline = process.as_ref().map_or(String::new(), |p| p.args.join(" ")),
                    status,
                    "new connection summary bucket"
                );
                if let Some(telemetry) = &self.ctx.telemetry {
                    let _ = telemetry.send(crate::telemetry::events::TelemetryEvent {
                        name: "ConnectionSummary".into(),
                        params: vec![
                            (
                                "UserName".into(),
                                user.as_ref()
                                    .and_then(|u| u.name.clone())
                                    .unwrap_or_default(),
                            ),
                            ("Uid".into(), caller.uid.to_string()),
                            ("Destination".into(), endpoint.addr.to_string()),
                            (
                                "ProcessFullPath".into(),
                                process
                                    .as_ref()
                                    .map(|p| p.exe_path.clone())
                                    .unwrap_or_default(),
                            ),
                            ("ResponseStatus".into(), status.to_string()),
                        ],
                    });
                }
            }
        }
        info!(
            target: ACCESS_TARGET,
            peer = %self.peer,
            caller_user = user.as_ref().and_then(|u| u.name.as_deref()).unwrap_or("?"),
            caller_exe = process.as_ref().map_or("?", |p| p.exe_path.as_str()),
            caller_pid = c.tgid,
            caller_tid = c.pid,
            caller_uid = c.uid,
            caller_gid = c.gid,
            caller_comm = c.comm(),
            has_record = self.caller.is_some(),
            endpoint,
            method,
            path,
            decision,
            rule,
            status,
            latency_us = plan.started.elapsed().as_micros() as u64,
            spliced_bytes = self.spliced,
            explanation = plan.explanation.as_deref(),
            error = error.map(|e| error_chain(e)),
            "request"
        );
    }

    fn log_unparsed(&self, status: u16, error: &ProxyError) {
        let c = self.caller.unwrap_or_default();
        info!(
            target: ACCESS_TARGET,
            peer = %self.peer,
            caller_pid = c.tgid,
            caller_uid = c.uid,
            has_record = self.caller.is_some(),
            status,
            error = %error_chain(error),
            "request refused before routing"
        );
        debug!(error = ?error, "request refused");
    }
}
