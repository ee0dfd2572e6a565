//! Connection limits shared by every core: so many connections in all, so many per uid, and
//! room always kept for root (DESIGN.md section 4). Atomics only: no lock on the accept path.
//!
//! Per-uid counts live in a fixed table indexed by uid modulo its size, so two uids may share
//! a counter. That errs on the strict side (a user can be limited early by another, never
//! allowed more than the limit), and it bounds the table however many users connect.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

const UID_SLOTS: usize = 1024;

/// The limits and the live counts.
#[derive(Debug)]
pub(crate) struct ConnectionLimits {
    max_total: usize,
    per_uid: u32,
    root_reserve: usize,
    total: AtomicUsize,
    by_uid: Vec<AtomicU32>,
}

/// One admitted connection; dropping it gives the slot back.
#[derive(Debug)]
pub(crate) struct Permit {
    limits: Arc<ConnectionLimits>,
    slot: Option<usize>,
}

impl ConnectionLimits {
    pub(crate) fn new(max_total: usize, per_uid: u32, root_reserve: usize) -> Arc<Self> {
        Arc::new(ConnectionLimits {
            max_total,
            per_uid,
            root_reserve: root_reserve.min(max_total),
            total: AtomicUsize::new(0),
            by_uid: (0..UID_SLOTS).map(|_| AtomicU32::new(0)).collect(),
        })
    }

    /// Admit a connection of `uid` (`None`: no caller record, counted as unprivileged).
    pub(crate) fn admit(self: &Arc<Self>, uid: Option<u32>) -> Option<Permit> {
        let root = uid == Some(0);
        let ceiling = if root {
            self.max_total
        } else {
            self.max_total - self.root_reserve
        };
        if self
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < ceiling).then_some(n + 1)
            })
            .is_err()
        {
            return None;
        }
        if root {
            return Some(Permit {
                limits: Arc::clone(self),
                slot: None,
            });
        }
        let slot = uid.map_or(UID_SLOTS - 1, |u| u as usize % UID_SLOTS);
        let per_uid = self.per_uid;
        if self.by_uid[slot]
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < per_uid).then_some(n + 1)
            })
            .is_err()
        {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Permit {
            limits: Arc::clone(self),
            slot: Some(slot),
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            self.limits.by_uid[slot].fetch_sub(1, Ordering::AcqRel);
        }
        self.limits.total.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_uid_total_and_root_reserve() {
        let limits = ConnectionLimits::new(10, 3, 2);
        let a: Vec<_> = (0..3)
            .map(|_| limits.admit(Some(1000)).expect("within the per-uid limit"))
            .collect();
        assert!(limits.admit(Some(1000)).is_none(), "fourth of one uid");
        let b: Vec<_> = (0..3)
            .map(|_| limits.admit(Some(1001)).expect("another uid"))
            .collect();
        let c: Vec<_> = (0..2)
            .map(|_| limits.admit(Some(1002)).expect("up to the reserve"))
            .collect();
        assert!(
            limits.admit(Some(1003)).is_none(),
            "8 of 10 used: the last 2 are root's"
        );
        assert!(limits.admit(None).is_none());
        let r1 = limits.admit(Some(0)).expect("root uses the reserve");
        let r2 = limits.admit(Some(0)).expect("root uses the reserve");
        assert!(limits.admit(Some(0)).is_none(), "total reached");
        drop((r1, r2));
        drop(a);
        assert!(
            limits.admit(Some(1000)).is_some(),
            "slots come back on drop"
        );
        drop((b, c));
    }
}
