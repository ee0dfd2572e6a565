//! [`CallerFacts`] over the kernel record and the per-core [`Enricher`]: what the proxy hands
//! to [`authorize`](super::authorize).
//!
//! Each fact is fetched on first use and kept for the rest of the request, so an evaluation
//! that needs no identity field reads nothing, and one that needs the exe path reads /proc
//! once (or not at all, when the enricher's cache already has the process). A process that is
//! gone, or whose pid now belongs to another process, has no process facts: its exe path and
//! process name never match.

use std::rc::Rc;

use super::evaluate::CallerFacts;
use crate::identity::enrich::{Enricher, ProcessFacts, ProcessGone, UserFacts};
use crate::identity::CallerRecord;

/// One request's caller, enriched lazily.
#[derive(Debug)]
pub struct EnrichedCaller<'a> {
    record: &'a CallerRecord,
    enricher: &'a mut Enricher,
    user: Option<Rc<UserFacts>>,
    process: Option<Result<Rc<ProcessFacts>, ProcessGone>>,
}

impl<'a> EnrichedCaller<'a> {
    pub fn new(record: &'a CallerRecord, enricher: &'a mut Enricher) -> Self {
        EnrichedCaller {
            record,
            enricher,
            user: None,
            process: None,
        }
    }

    fn user(&mut self) -> &UserFacts {
        let EnrichedCaller {
            record,
            enricher,
            user,
            ..
        } = self;
        user.get_or_insert_with(|| enricher.user(record.uid, record.gid))
    }

    fn process(&mut self) -> Option<&ProcessFacts> {
        let EnrichedCaller {
            record,
            enricher,
            process,
            ..
        } = self;
        process
            .get_or_insert_with(|| enricher.process(record.tgid, record.start_boottime_ns))
            .as_deref()
            .ok()
    }
}

impl CallerFacts for EnrichedCaller<'_> {
    fn uid(&self) -> u32 {
        self.record.uid
    }

    fn user_name(&mut self) -> Option<&str> {
        self.user().name.as_deref()
    }

    fn in_group(&mut self, group: &str) -> bool {
        self.user().groups.iter().any(|g| g == group)
    }

    fn exe_path(&mut self) -> Option<&str> {
        self.process().map(|p| p.exe_path.as_str())
    }

    fn process_name(&mut self) -> Option<&str> {
        self.process()
            .map(|p| p.process_name.as_str())
            .filter(|n| !n.is_empty())
    }
}
