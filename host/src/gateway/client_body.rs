//! The client's request body as the gateway reads it: it must keep
//! arriving. A body that pauses longer than the gateway's idle timeout ends
//! with [`Stalled`], answered 408: without it, a client that sends headers
//! and then trickles (or stops) its body holds the connection, and the
//! upstream's, for as long as it likes, since the upstream's response
//! timeout only starts once the body is sent.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

/// Any error a gateway body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client paused its body too long.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the request body paused longer than {0:?}")]
pub struct Stalled(pub Duration);

/// The [`Stalled`] that `error` is or wraps, if any: the upstream client
/// reports a failed request body as its own error with ours inside.
pub fn stalled<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Stalled> {
    std::iter::successors(Some(error), |e| e.source()).find_map(|e| e.downcast_ref::<Stalled>())
}

/// A request body that fails with [`Stalled`] when no frame arrives for
/// `gap`.
pub struct ClientBody {
    inner: Incoming,
    gap: Duration,
    /// Armed the first time the body makes the reader wait (a body that is
    /// already complete never needs a timer), then pushed back by each
    /// frame.
    timer: Option<Pin<Box<Sleep>>>,
}

impl ClientBody {
    /// `inner`, allowed to pause at most `gap` between frames.
    pub fn new(inner: Incoming, gap: Duration) -> Self {
        Self { inner, gap, timer: None }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(timer) = this.timer.as_mut() {
                    timer.as_mut().reset(Instant::now() + this.gap);
                }
                Poll::Ready(frame.map(|frame| frame.map_err(BoxError::from)))
            }
            Poll::Pending => {
                let gap = this.gap;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Some(Err(Stalled(gap).into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
