//! fastproxy: a guard for a cloud VM's platform endpoints.
//!
//! The kernel programs (crate `fastproxy-ebpf`) redirect connects aimed at a guarded endpoint to
//! this proxy and record who made them; the proxy reads that record by the accepted socket,
//! parses the request strictly, authorizes it, adds the platform's headers and forwards it.
//!
//! The pure layer (`http`, `policy`, `identity` types, `upstream` endpoint table, `config`)
//! builds without the `runtime` feature: no runtime, no aya, no sockets.

pub mod config;
pub mod http;
pub mod identity;
pub mod keykeeper;
pub mod policy;
pub mod signing;
pub mod status;
pub mod upstream;

#[cfg(feature = "runtime")]
pub mod demo;
#[cfg(feature = "runtime")]
pub mod proxy;
#[cfg(feature = "runtime")]
pub mod redirect;
#[cfg(feature = "runtime")]
pub mod sys;
#[cfg(feature = "runtime")]
pub mod telemetry;
