//! Connection summaries (SPEC-GPA.md section 7): counters keyed by user name, client ip,
//! destination, exe path, command line and response status, in 15-minute buckets kept for 4
//! hours. The first request of a key in a new bucket is reported once, as a structured log
//! event; operators turn those into allow-lists. One table per core, no lock.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::rc::Rc;

use crate::identity::enrich::{ProcessFacts, UserFacts};

/// Bucket length and how long buckets are kept.
pub const BUCKET_SECS: u64 = 15 * 60;
pub const KEEP_SECS: u64 = 4 * 60 * 60;

/// What a summary counts by: user (name and groups), client ip, destination, process (exe
/// path and command line) and status. The facts are the enricher's shared, cached values, so
/// building a key allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SummaryKey {
    pub user: Option<Rc<UserFacts>>,
    pub client_ip: Ipv4Addr,
    pub destination: SocketAddrV4,
    pub process: Option<Rc<ProcessFacts>>,
    pub status: u16,
}

/// One summary as the status report lists it (SPEC-GPA.md section 7).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SummaryEntry {
    pub user_name: String,
    pub user_groups: Vec<String>,
    pub ip: String,
    pub port: u16,
    pub client_ip: String,
    pub process_full_path: String,
    pub process_cmd_line: String,
    pub response_status: String,
    pub count: u64,
}

/// Per-core summary table.
#[derive(Debug, Default)]
pub struct Summaries {
    counts: HashMap<SummaryKey, VecDeque<(u64, u64)>>,
}

impl Summaries {
    /// Count one request at `now` (unix seconds). Returns true when this key just opened a
    /// new bucket (the caller logs it once).
    pub fn record(&mut self, key: SummaryKey, now: u64) -> bool {
        let bucket = now / BUCKET_SECS;
        let entry = self.counts.entry(key).or_default();
        let new = match entry.back_mut() {
            Some((b, count)) if *b == bucket => {
                *count += 1;
                false
            }
            _ => {
                entry.push_back((bucket, 1));
                true
            }
        };
        let oldest = now.saturating_sub(KEEP_SECS) / BUCKET_SECS;
        while entry.front().is_some_and(|(b, _)| *b < oldest) {
            entry.pop_front();
        }
        new
    }

    /// Drop keys whose buckets are all older than 4 hours.
    pub fn prune(&mut self, now: u64) {
        let oldest = now.saturating_sub(KEEP_SECS) / BUCKET_SECS;
        self.counts.retain(|_, buckets| {
            while buckets.front().is_some_and(|(b, _)| *b < oldest) {
                buckets.pop_front();
            }
            !buckets.is_empty()
        });
    }

    /// Requests counted for `key` over the kept buckets.
    pub fn total(&self, key: &SummaryKey) -> u64 {
        self.counts
            .get(key)
            .map_or(0, |b| b.iter().map(|(_, c)| c).sum())
    }

    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Every key with its count over the kept buckets, in the status report's shape.
    pub fn snapshot(&self) -> Vec<SummaryEntry> {
        self.counts
            .iter()
            .map(|(key, buckets)| SummaryEntry {
                user_name: key
                    .user
                    .as_ref()
                    .and_then(|u| u.name.clone())
                    .unwrap_or_default(),
                user_groups: key
                    .user
                    .as_ref()
                    .map(|u| u.groups.clone())
                    .unwrap_or_default(),
                ip: key.destination.ip().to_string(),
                port: key.destination.port(),
                client_ip: key.client_ip.to_string(),
                process_full_path: key
                    .process
                    .as_ref()
                    .map(|p| p.exe_path.clone())
                    .unwrap_or_default(),
                process_cmd_line: key
                    .process
                    .as_ref()
                    .map(|p| p.args.join(" "))
                    .unwrap_or_default(),
                response_status: key.status.to_string(),
                count: buckets.iter().map(|(_, c)| c).sum(),
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(status: u16) -> SummaryKey {
        SummaryKey {
            user: Some(Rc::new(UserFacts {
                name: Some("root".into()),
                groups: vec!["root".into()],
            })),
            client_ip: Ipv4Addr::LOCALHOST,
            destination: "168.63.129.16:80".parse().expect("addr"),
            process: Some(Rc::new(ProcessFacts {
                exe_path: "/usr/bin/curl".into(),
                process_name: "curl".into(),
                args: vec!["curl".into(), "http://168.63.129.16/".into()],
            })),
            status,
        }
    }

    #[test]
    fn buckets_open_once_and_age_out() {
        let mut s = Summaries::default();
        let t0 = 1_000_000 * BUCKET_SECS;
        assert!(s.record(key(200), t0), "first request opens a bucket");
        assert!(!s.record(key(200), t0 + 10), "same bucket: no new event");
        assert!(s.record(key(403), t0 + 10), "another status is another key");
        assert!(s.record(key(200), t0 + BUCKET_SECS), "the next 15 minutes");
        assert_eq!(s.total(&key(200)), 3);
        s.prune(t0 + KEEP_SECS + BUCKET_SECS);
        assert_eq!(
            s.total(&key(200)),
            1,
            "only the bucket younger than 4 hours stays"
        );
        s.prune(t0 + 2 * KEEP_SECS);
        assert!(s.is_empty());
    }
}
