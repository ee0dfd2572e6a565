//! Logging: tracing to stderr, as text for people or JSON lines for machines, and the access
//! log (one event per request, target `fastproxy::access`).

pub mod events;
pub mod summary;

use tracing_subscriber::EnvFilter;

/// The tracing target of access-log events.
pub const ACCESS_TARGET: &str = "fastproxy::access";
/// The tracing target of connection-summary events (one per key and 15-minute bucket).
pub const SUMMARY_TARGET: &str = "fastproxy::summary";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format {other:?}: expected text or json"
            )),
        }
    }
}

/// Keeps the log writer thread running; dropping it flushes what is queued.
pub type LogGuard = tracing_appender::non_blocking::WorkerGuard;

/// Install the global subscriber. `RUST_LOG` overrides the default level (info). Lines are
/// formatted on the worker threads but written by a background thread, so no request waits
/// on a write(2) to stderr; the queue is not lossy (a full queue slows logging down rather
/// than dropping access-log lines).
pub fn init(format: LogFormat) -> LogGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        // Buffered: the writer thread drains every queued line, then flushes once, so a busy
        // proxy makes one write(2) per batch instead of one per line.
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    guard
}

/// An error and all its causes, `outer: cause: root cause`, for the log (clients get a short
/// reason instead; see `proxy::connection::to_response`).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
