//! Host time (SPEC-GPA.md section 6.4): the host's clock is taken from a status reply's
//! `x-ms-azure-host-date` (else `Date`) when the last sync is older than 15 minutes; dates the
//! proxy writes are host time plus the time elapsed since the sync (monotonic), so a guest
//! clock that is off or jumps does not change them.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;

/// How often the host time is taken again.
pub const RESYNC: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, Copy)]
struct Sync {
    host: SystemTime,
    at: Instant,
}

/// The host-synchronised clock, shared by every core; reading it takes no lock (every
/// request reads it for its date header).
#[derive(Debug, Default)]
pub struct HostClock {
    sync: ArcSwapOption<Sync>,
}

impl HostClock {
    /// Whether a status reply should be used to sync (never synced, or too long ago).
    pub fn wants_sync(&self) -> bool {
        self.synced().is_none_or(|s| s.at.elapsed() >= RESYNC)
    }

    /// Sync from an HTTP date (`x-ms-azure-host-date` or `Date`); false when unparsable.
    pub fn sync_from(&self, http_date: &str) -> bool {
        match httpdate::parse_http_date(http_date.trim()) {
            Ok(host) => {
                self.sync.store(Some(Arc::new(Sync {
                    host,
                    at: Instant::now(),
                })));
                true
            }
            Err(_) => false,
        }
    }

    /// Host time now (the guest clock until the first sync).
    pub fn now(&self) -> SystemTime {
        match self.synced() {
            Some(s) => s.host + s.at.elapsed(),
            None => SystemTime::now(),
        }
    }

    /// Host time now as an RFC 1123 date.
    pub fn http_date(&self) -> String {
        httpdate::fmt_http_date(self.now())
    }

    fn synced(&self) -> Option<Sync> {
        self.sync.load().as_deref().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_follow_the_host_not_the_guest() {
        let clock = HostClock::default();
        assert!(clock.wants_sync());
        assert!(!clock.sync_from("not a date"));
        assert!(clock.sync_from("Sun, 06 Nov 1994 08:49:37 GMT"));
        assert!(!clock.wants_sync());
        let date = clock.http_date();
        assert!(date.starts_with("Sun, 06 Nov 1994 08:49:3"), "{date}");
    }
}
