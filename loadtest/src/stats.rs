//! Per-thread counters, merging, percentiles and the summary output formats.

use std::time::Duration;

/// Why a request attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// TCP connect failed or timed out.
    Connect,
    /// I/O failure after connecting: reset, timeout, premature close.
    Io,
    /// The response could not be parsed or its end could not be determined.
    Protocol,
    /// A well-formed response with a status outside 2xx/3xx.
    Status,
}

/// What one connection thread observed.
#[derive(Debug, Default)]
pub struct ThreadStats {
    pub ok: u64,
    pub connect_errors: u64,
    pub io_errors: u64,
    pub protocol_errors: u64,
    pub status_errors: u64,
    /// Latencies of successful (2xx/3xx) requests, in microseconds.
    pub latencies_us: Vec<u64>,
    pub first_error: Option<String>,
}

impl ThreadStats {
    pub fn record_error(&mut self, kind: ErrorKind, detail: impl FnOnce() -> String) {
        match kind {
            ErrorKind::Connect => self.connect_errors += 1,
            ErrorKind::Io => self.io_errors += 1,
            ErrorKind::Protocol => self.protocol_errors += 1,
            ErrorKind::Status => self.status_errors += 1,
        }
        if self.first_error.is_none() {
            self.first_error = Some(detail());
        }
    }
}

/// The merged result of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Request attempts: successes plus errors.
    pub requests: u64,
    pub errors: u64,
    pub connect_errors: u64,
    pub io_errors: u64,
    pub protocol_errors: u64,
    pub status_errors: u64,
    pub elapsed: Duration,
    /// Percentiles over successful requests only (0 when there were none).
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub first_error: Option<String>,
}

impl Summary {
    pub fn merge(threads: Vec<ThreadStats>, elapsed: Duration) -> Self {
        let mut lat = Vec::with_capacity(threads.iter().map(|t| t.latencies_us.len()).sum());
        let (mut ok, mut ce, mut ie, mut pe, mut se) = (0, 0, 0, 0, 0);
        let mut first_error = None;
        for t in threads {
            ok += t.ok;
            ce += t.connect_errors;
            ie += t.io_errors;
            pe += t.protocol_errors;
            se += t.status_errors;
            first_error = first_error.or(t.first_error);
            lat.extend_from_slice(&t.latencies_us);
        }
        lat.sort_unstable();
        let errors = ce + ie + pe + se;
        Summary {
            requests: ok + errors,
            errors,
            connect_errors: ce,
            io_errors: ie,
            protocol_errors: pe,
            status_errors: se,
            elapsed,
            p50_us: percentile(&lat, 50.0),
            p90_us: percentile(&lat, 90.0),
            p99_us: percentile(&lat, 99.0),
            max_us: lat.last().copied().unwrap_or(0),
            first_error,
        }
    }

    pub fn req_per_s(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.requests as f64 / secs
        } else {
            0.0
        }
    }

    fn fields(&self) -> [(&'static str, String); 12] {
        [
            ("requests", self.requests.to_string()),
            ("errors", self.errors.to_string()),
            ("seconds", format!("{:.2}", self.elapsed.as_secs_f64())),
            ("req_per_s", format!("{:.1}", self.req_per_s())),
            ("p50_us", self.p50_us.to_string()),
            ("p90_us", self.p90_us.to_string()),
            ("p99_us", self.p99_us.to_string()),
            ("max_us", self.max_us.to_string()),
            ("connect_errors", self.connect_errors.to_string()),
            ("io_errors", self.io_errors.to_string()),
            ("protocol_errors", self.protocol_errors.to_string()),
            ("status_errors", self.status_errors.to_string()),
        ]
    }

    /// `key=value` pairs separated by single spaces, on one line.
    pub fn to_line(&self) -> String {
        let parts: Vec<String> = self
            .fields()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        parts.join(" ")
    }

    /// The same fields as one JSON object (all values are numbers).
    pub fn to_json(&self) -> String {
        let parts: Vec<String> = self
            .fields()
            .iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        format!("{{{}}}", parts.join(","))
    }
}

/// Nearest-rank percentile of an ascending-sorted slice; 0 for an empty one.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let n = sorted.len();
    let rank = ((p.clamp(0.0, 100.0) / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 90.0), 90);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&v, 0.0), 1);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
        assert_eq!(percentile(&[10, 20, 30, 40], 50.0), 20);
        assert_eq!(percentile(&[10, 20, 30, 40], 51.0), 30);
        assert_eq!(percentile(&[10, 20, 30, 40], 99.0), 40);
    }

    #[test]
    fn merge_and_format() {
        let a = ThreadStats {
            ok: 3,
            latencies_us: vec![300, 100, 200],
            ..ThreadStats::default()
        };
        let mut b = ThreadStats {
            ok: 1,
            latencies_us: vec![400],
            ..ThreadStats::default()
        };
        b.record_error(ErrorKind::Status, || "status 500".into());
        b.record_error(ErrorKind::Connect, || "refused".into());
        let s = Summary::merge(vec![a, b], Duration::from_secs(2));
        assert_eq!((s.requests, s.errors), (6, 2));
        assert_eq!((s.p50_us, s.max_us), (200, 400));
        assert_eq!(s.first_error.as_deref(), Some("status 500"));
        assert_eq!(
            s.to_line(),
            "requests=6 errors=2 seconds=2.00 req_per_s=3.0 p50_us=200 p90_us=400 \
             p99_us=400 max_us=400 connect_errors=1 io_errors=0 protocol_errors=0 status_errors=1"
        );
        assert_eq!(
            s.to_json(),
            "{\"requests\":6,\"errors\":2,\"seconds\":2.00,\"req_per_s\":3.0,\"p50_us\":200,\
             \"p90_us\":400,\"p99_us\":400,\"max_us\":400,\"connect_errors\":1,\"io_errors\":0,\
             \"protocol_errors\":0,\"status_errors\":1}"
        );
    }
}
