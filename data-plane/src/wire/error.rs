//! How an HTTP/2 stream fails, on either side of the proxy: the peer reset it, or its
//! connection ended. A reset passes on as the same reset: [`reason_of`] finds it in an
//! error's sources.

use std::error::Error as StdError;
use std::sync::Arc;

use h2::Reason;

/// Why a stream failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StreamError {
    #[error("the peer reset the stream ({0})")]
    Reset(Reason),
    #[error("{0}")]
    Connection(Arc<str>),
}

impl StreamError {
    pub(super) fn connection(message: impl Into<String>) -> StreamError {
        StreamError::Connection(message.into().into())
    }

    /// The HTTP/2 reason a reset gave.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            StreamError::Reset(reason) => Some(*reason),
            StreamError::Connection(_) => None,
        }
    }
}

/// The reason of the first HTTP/2 reset among `error` and its sources (as hyper looked
/// for it: an upstream stream's reset passes on as the same reset), else
/// `INTERNAL_ERROR`.
pub(super) fn reason_of(error: &(dyn StdError + 'static)) -> Reason {
    std::iter::successors(Some(error), |&e| e.source())
        .find_map(|e| {
            e.downcast_ref::<StreamError>()
                .and_then(StreamError::reason)
                .or_else(|| e.downcast_ref::<h2::Error>().and_then(h2::Error::reason))
        })
        .unwrap_or(Reason::INTERNAL_ERROR)
}
