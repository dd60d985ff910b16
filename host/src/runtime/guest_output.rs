//! A plugin's stdout and stderr. Each line goes to the log as the guest
//! writes it, under the plugin's name. Nothing accumulates in an instance
//! that serves many calls, so a plugin that logs on every call keeps its
//! warm instance. What one call writes is capped: past [`CALL_CAP`] the rest
//! is dropped with one warning. Output never fails a call.
//!
//! The stderr of the running call is also kept, its last [`TAIL_MAX`]
//! bytes, because a Rust guest prints its panic message there just before it
//! traps. That message is the most useful thing to tell the operator.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes one call may write to one stream; the rest is dropped.
pub const CALL_CAP: usize = 64 << 10;
/// Longest line logged; the rest of a longer line is dropped.
const LINE_MAX: usize = 4 << 10;
/// Bytes of the running call's stderr kept to explain a trap.
const TAIL_MAX: usize = 4 << 10;

/// One output stream of one plugin instance. Clones share the stream.
#[derive(Clone)]
pub(crate) struct GuestOutput(Arc<Mutex<State>>);

struct State {
    plugin: Arc<str>,
    stream: &'static str,
    /// The line being written, not yet ended by a newline.
    line: Vec<u8>,
    /// Bytes the running call has written.
    written: usize,
    /// What the running call wrote, its last `TAIL_MAX` bytes or more;
    /// `None` for a stream whose tail nobody reads.
    tail: Option<Vec<u8>>,
}

impl GuestOutput {
    /// The `stream` ("stdout", "stderr") of `plugin`; `keep_tail` keeps what
    /// each call writes, for [`GuestOutput::call_tail`].
    pub(crate) fn new(plugin: Arc<str>, stream: &'static str, keep_tail: bool) -> Self {
        let tail = keep_tail.then(Vec::new);
        Self(Arc::new(Mutex::new(State { plugin, stream, line: Vec::new(), written: 0, tail })))
    }

    /// Starts a call: its cap and its tail start empty.
    pub(crate) fn begin_call(&self) {
        let mut state = self.state();
        state.written = 0;
        if let Some(tail) = &mut state.tail {
            tail.clear();
        }
    }

    /// Ends a call: a last line without a newline is logged too.
    pub(crate) fn end_call(&self) {
        let mut state = self.state();
        if !state.line.is_empty() {
            state.log_line();
        }
    }

    /// What the running (or last) call wrote, at most its last
    /// [`TAIL_MAX`] bytes, decoded lossily.
    pub(crate) fn call_tail(&self) -> String {
        let state = self.state();
        let tail = state.tail.as_deref().unwrap_or_default();
        String::from_utf8_lossy(&tail[tail.len().saturating_sub(TAIL_MAX)..]).into_owned()
    }

    /// Takes what the guest wrote; never refuses it.
    fn write(&self, bytes: &[u8]) {
        let mut state = self.state();
        let room = CALL_CAP.saturating_sub(state.written);
        let kept = &bytes[..bytes.len().min(room)];
        // Warned once, by the write that loses the first byte.
        if kept.len() < bytes.len() && state.written <= CALL_CAP {
            tracing::warn!(
                plugin = &*state.plugin,
                stream = state.stream,
                "the plugin wrote more than {} KiB in one call; the rest of its output is dropped",
                CALL_CAP >> 10
            );
        }
        state.written += bytes.len();
        if let Some(tail) = &mut state.tail {
            // Trimmed only once it is twice the size kept, so that a call
            // writing byte by byte does not move the buffer on every write.
            if tail.len() + kept.len() > 2 * TAIL_MAX {
                tail.drain(..tail.len().saturating_sub(TAIL_MAX));
            }
            tail.extend_from_slice(kept);
        }
        let mut rest = kept;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            state.push(&rest[..end]);
            state.log_line();
            rest = &rest[end + 1..];
        }
        state.push(rest);
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves nothing half-done that
        // matters for logging: carry on with the state as it is.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// Adds to the line being written, up to [`LINE_MAX`].
    fn push(&mut self, bytes: &[u8]) {
        let room = LINE_MAX.saturating_sub(self.line.len());
        self.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// Logs the line being written (blank lines are skipped) and clears it.
    fn log_line(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end_matches('\r');
        if !text.trim().is_empty() {
            tracing::info!(plugin = &*self.plugin, stream = self.stream, "{text}");
        }
        self.line.clear();
    }
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        GuestOutput::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always room: what passes the cap is dropped, not refused, so a
        // chatty plugin is never blocked or failed by its own logging.
        Ok(CALL_CAP)
    }
}

#[async_trait::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for GuestOutput {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        GuestOutput::write(&self, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_holds_this_call_only_and_lines_may_span_writes() {
        let out = GuestOutput::new("p".into(), "stderr", true);
        out.write(b"first call\n");
        out.begin_call();
        out.write(b"thread 'x' pan");
        out.write(b"icked at src/lib.rs:1:1:\nboom\n");
        assert_eq!(out.call_tail(), "thread 'x' panicked at src/lib.rs:1:1:\nboom\n");
        assert!(out.state().line.is_empty(), "complete lines were logged");
        out.write(b"no newline");
        out.end_call();
        assert!(out.state().line.is_empty(), "the last partial line is logged at the end of the call");
    }

    #[test]
    fn a_call_past_the_cap_is_cut_not_failed_and_the_next_call_writes_again() {
        let out = GuestOutput::new("p".into(), "stderr", true);
        out.begin_call();
        for _ in 0..(CALL_CAP / 10 + 100) {
            out.write(b"123456789\n");
        }
        let tail = out.call_tail();
        assert_eq!(tail.len(), TAIL_MAX, "the tail is the last bytes before the cap");
        assert!(tail.ends_with("123456"), "{tail}");
        assert_eq!(out.state().written, (CALL_CAP / 10 + 100) * 10);
        out.begin_call();
        out.write(b"again\n");
        assert_eq!(out.call_tail(), "again\n");
    }

    #[test]
    fn long_lines_are_cut() {
        let out = GuestOutput::new("p".into(), "stdout", false);
        out.write(&vec![b'x'; LINE_MAX * 3]);
        assert_eq!(out.state().line.len(), LINE_MAX);
        assert_eq!(out.call_tail(), "");
    }
}
