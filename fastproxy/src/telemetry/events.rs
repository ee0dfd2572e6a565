//! Telemetry events to WireServer (SPEC-GPA.md section 7): batched as XML, under 64 KB a
//! batch, POSTed to `/machine/?comp=telemetrydata`; retried with back-off, and spooled to a
//! bounded directory while WireServer cannot be reached, so nothing is lost to a short outage
//! and a long one cannot fill the disk.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tracing::warn;

/// A batch stays under this size (SPEC-GPA.md section 7).
pub const MAX_BATCH: usize = 64 * 1024;
/// The provider id of fastproxy's events.
pub const PROVIDER_ID: &str = "69B669B9-4AF8-4C50-BDC4-6006FA76E975";

/// One event: a name and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryEvent {
    pub name: String,
    pub params: Vec<(String, String)>,
}

fn escape_attribute(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\t' => {}
            c => out.push(c),
        }
    }
}

/// One `<Event>` element.
fn event_xml(id: usize, event: &TelemetryEvent) -> String {
    let mut params = String::new();
    let mut push = |name: &str, value: &str| {
        params.push_str("<Param Name=\"");
        escape_attribute(&mut params, name);
        params.push_str("\" Value=\"");
        escape_attribute(&mut params, value);
        params.push_str("\" T=\"mt:wstr\" />");
    };
    push("Name", &event.name);
    for (name, value) in &event.params {
        push(name, value);
    }
    // Escaped attributes cannot contain "]]>", so the CDATA section cannot end early.
    let mut xml = String::new();
    let _ = write!(xml, "<Event id=\"{id}\"><![CDATA[{params}]]></Event>");
    xml
}

/// Batch `events` (in order) into documents under `MAX_BATCH` bytes. An event too large for
/// a batch of its own is dropped (and counted).
pub fn batches(events: &[TelemetryEvent]) -> (Vec<String>, usize) {
    const HEAD: &str = "<?xml version=\"1.0\"?><TelemetryData version=\"1.0\"><Provider id=\"";
    const TAIL: &str = "</Provider></TelemetryData>";
    let frame = HEAD.len() + PROVIDER_ID.len() + 2 + TAIL.len();
    let mut out = Vec::new();
    let mut current = String::new();
    let mut dropped = 0;
    for (i, event) in events.iter().enumerate() {
        let xml = event_xml(i + 1, event);
        if frame + xml.len() > MAX_BATCH {
            dropped += 1;
            continue;
        }
        if frame + current.len() + xml.len() > MAX_BATCH {
            out.push(format!("{HEAD}{PROVIDER_ID}\">{current}{TAIL}"));
            current.clear();
        }
        current.push_str(&xml);
    }
    if !current.is_empty() {
        out.push(format!("{HEAD}{PROVIDER_ID}\">{current}{TAIL}"));
    }
    (out, dropped)
}

/// Where and how the sender delivers.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    pub wireserver: std::net::SocketAddrV4,
    pub mark: u32,
    /// Undelivered batches wait here (bounded).
    pub spool: PathBuf,
    /// Batches kept in the spool at most; the oldest go first.
    pub spool_limit: usize,
    /// How often queued events are sent.
    pub period: Duration,
}

/// Start the sender thread; events come in on the returned channel.
pub fn spawn(
    settings: TelemetrySettings,
    clock: std::sync::Arc<crate::keykeeper::keeper::ChannelState>,
) -> std::io::Result<mpsc::Sender<TelemetryEvent>> {
    let (tx, rx) = mpsc::channel::<TelemetryEvent>();
    std::thread::Builder::new()
        .name("fastproxy-telemetry".into())
        .spawn(move || {
            let mut backoff = Duration::from_secs(1);
            let mut next_try = Instant::now();
            loop {
                let mut events = Vec::new();
                match rx.recv_timeout(settings.period) {
                    Ok(e) => events.push(e),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
                events.extend(rx.try_iter());
                let (documents, dropped) = batches(&events);
                if dropped > 0 {
                    warn!(dropped, "telemetry events larger than a batch were dropped");
                }
                for doc in documents {
                    spool_put(&settings, &doc);
                }
                if Instant::now() < next_try {
                    continue;
                }
                match deliver_spool(&settings, &clock) {
                    Ok(()) => backoff = Duration::from_secs(1),
                    Err(e) => {
                        warn!(error = %crate::telemetry::error_chain(&e), retry_in_s = backoff.as_secs(), "telemetry not delivered");
                        next_try = Instant::now() + backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(300));
                    }
                }
            }
        })?;
    Ok(tx)
}

fn spool_entries(settings: &TelemetrySettings) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(&settings.spool)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "xml"));
    files.sort();
    files
}

fn spool_put(settings: &TelemetrySettings, doc: &str) {
    use std::os::unix::fs::DirBuilderExt;
    if std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&settings.spool)
        .is_err()
    {
        return;
    }
    let name = format!(
        "{:020}.xml",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let _ = std::fs::write(settings.spool.join(name), doc);
    let files = spool_entries(settings);
    for old in files
        .iter()
        .take(files.len().saturating_sub(settings.spool_limit))
    {
        let _ = std::fs::remove_file(old);
    }
}

/// Send the spool oldest first; stop at the first failure (the rest waits).
fn deliver_spool(
    settings: &TelemetrySettings,
    state: &crate::keykeeper::keeper::ChannelState,
) -> Result<(), crate::keykeeper::keeper::KeeperError> {
    for file in spool_entries(settings) {
        let Ok(doc) = std::fs::read(&file) else {
            let _ = std::fs::remove_file(&file);
            continue;
        };
        let reply = crate::keykeeper::keeper::wire_request(
            settings.wireserver,
            settings.mark,
            &state.clock,
            "POST",
            "/machine/?comp=telemetrydata",
            &doc,
            "text/xml; charset=utf-8",
            None,
        )?;
        if reply.status >= 500 {
            return Err(crate::keykeeper::keeper::KeeperError::Status {
                what: "telemetry",
                status: reply.status,
            });
        }
        // Delivered (or refused for good: a 4xx will not get better by retrying).
        let _ = std::fs::remove_file(&file);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize, size: usize) -> TelemetryEvent {
        TelemetryEvent {
            name: format!("event-{n}"),
            params: vec![("Data".into(), "x".repeat(size))],
        }
    }

    #[test]
    fn batches_stay_under_64k_and_keep_every_event() {
        let events: Vec<_> = (0..100).map(|i| event(i, 2000)).collect();
        let (docs, dropped) = batches(&events);
        assert_eq!(dropped, 0);
        assert!(docs.len() >= 3);
        assert!(docs.iter().all(|d| d.len() <= MAX_BATCH));
        let total: usize = docs.iter().map(|d| d.matches("<Event id=").count()).sum();
        assert_eq!(total, 100);
        assert!(docs[0]
            .starts_with("<?xml version=\"1.0\"?><TelemetryData version=\"1.0\"><Provider id=\""));
    }

    #[test]
    fn values_are_escaped_and_cdata_cannot_break() {
        let e = TelemetryEvent {
            name: "n".into(),
            params: vec![("k".into(), "a\"b<c>&]]>d".into())],
        };
        let (docs, _) = batches(&[e]);
        assert!(
            docs[0].contains("Value=\"a&quot;b&lt;c&gt;&amp;]]&gt;d\""),
            "{}",
            docs[0]
        );
        assert_eq!(docs[0].matches("]]>").count(), 1, "only the CDATA end");
        let (_, dropped) = batches(&[event(0, 70_000)]);
        assert_eq!(dropped, 1);
    }
}
