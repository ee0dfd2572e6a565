//! Everything that can be wrong with a message, each with the status a client is answered.

use thiserror::Error;

/// Why a request or response was refused. Each variant maps to exactly one status code.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HttpError {
    #[error("malformed request head: {0}")]
    Malformed(&'static str),
    #[error("request line longer than {0} bytes")]
    RequestLineTooLong(usize),
    #[error("request head larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("more than {0} header fields")]
    TooManyHeaders(usize),
    #[error("method {0} is not allowed")]
    MethodNotAllowed(String),
    #[error("path traversal in the request target")]
    Traversal,
    #[error("invalid framing: {0}")]
    Framing(&'static str),
    #[error("malformed upstream response: {0}")]
    BadResponse(&'static str),
}

impl HttpError {
    /// The status a client is answered with for this error.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) | HttpError::Framing(_) => 400,
            HttpError::RequestLineTooLong(_) => 414,
            HttpError::HeadTooLarge(_) | HttpError::TooManyHeaders(_) => 431,
            HttpError::MethodNotAllowed(_) => 405,
            HttpError::Traversal => 403,
            HttpError::BadResponse(_) => 502,
        }
    }
}
