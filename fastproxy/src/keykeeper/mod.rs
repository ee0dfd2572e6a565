//! The key keeper: the secure channel with WireServer (SPEC-GPA.md section 6). The pure part
//! (status parsing, modes, state text) lives here; the polling loop comes with the runtime.

pub mod clock;
pub mod status;

#[cfg(feature = "runtime")]
pub mod keeper;
