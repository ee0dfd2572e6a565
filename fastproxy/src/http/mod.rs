//! Pure HTTP/1.1: strict head parsing, body framing, re-serialisation of what goes upstream.
//!
//! Nothing here touches a socket or a runtime, so the fuzzers and benches drive it directly.
//! The parser is httparse with every leniency off, plus fastproxy's own framing rules (DESIGN.md
//! decision 7): where httparse or RFC 9112 leave room, fastproxy rejects rather than guesses,
//! because every guess a proxy makes differently from the server behind it is a smuggling hole.

pub mod error;
pub mod framing;
pub mod head;
pub mod response;
pub mod rewrite;

pub use error::HttpError;
pub use framing::{BodyKind, ChunkedDecoder};
pub use head::{parse_request, Limits, RequestHead};
pub use response::{parse_response, ResponseHead};
