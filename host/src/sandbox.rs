//! The host side of a plugin instance: its [`Store`] data (WASI with no
//! capabilities, captured stdout/stderr, a memory cap, the host services),
//! the deadline every call runs under, and how a failed call is explained.
//! [`call`] runs one call on a fresh instance (loading does this); serving
//! reuses warm instances, see [`crate::instances`].

use std::time::{Duration, Instant};

use wasmtime::component::{Instance, InstancePre, ResourceTable};
use wasmtime::{ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use std::sync::Arc;

use crate::contract::services;
use crate::engine::Runtime;
use crate::error::CallError;
use crate::jwt::Verifier;

/// Bytes of stdout/stderr kept per call; more is cut.
const OUTPUT_CAPACITY: usize = 64 << 10;

/// The host state of one plugin call.
pub struct Sandbox {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: MemoryCap,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
    /// Bytes of stdout and stderr already sent to the log: an instance that
    /// serves several calls keeps its pipes.
    forwarded: [usize; 2],
    verifier: Arc<Verifier>,
    /// When the running call must stop; see [`arm_deadline`].
    deadline: Instant,
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl Sandbox {
    /// Host state for one call: WASI with no capabilities, output captured,
    /// memory capped at `max_memory_bytes`.
    pub(crate) fn new(max_memory_bytes: usize, verifier: Arc<Verifier>) -> Self {
        let stdout = MemoryOutputPipe::new(OUTPUT_CAPACITY);
        let stderr = MemoryOutputPipe::new(OUTPUT_CAPACITY);
        // No preopens, no environment, no arguments, no sockets: the
        // defaults plus sockets switched off explicitly.
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limits: MemoryCap { max: max_memory_bytes, peak: 0 },
            stdout,
            stderr,
            forwarded: [0; 2],
            verifier,
            deadline: Instant::now(),
        }
    }

    /// Largest memory size the guest asked for so far, in bytes.
    pub(crate) fn memory_peak(&self) -> usize {
        self.limits.peak
    }

    /// True when a captured stream is at least half full, so that a further
    /// call's output might be cut. Reads what [`forward_output`] recorded, so
    /// call it after that: reading a pipe copies its whole buffer.
    pub(crate) fn output_filling(&self) -> bool {
        self.forwarded.iter().any(|&held| held > OUTPUT_CAPACITY / 2)
    }

    /// The memory limiter, for `Store::limiter`.
    pub(crate) fn limits(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limits
    }
}

/// The host services (`wit/plugin.wit`, interface `services`).
impl services::Host for Sandbox {
    fn verify_jwt(&mut self, token: String, policy: services::JwtPolicy) -> Result<String, services::JwtError> {
        self.verifier.verify(&token, &policy).map(|claims| claims.to_string())
    }

    fn now_millis(&mut self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }
}

/// Refuses memory growth past the cap with an error the host recognises, so
/// the operator is told "memory cap" rather than a bare trap.
struct MemoryCap {
    max: usize,
    /// Largest size asked for (granted or not), for deciding reuse.
    peak: usize,
}

/// Raised inside a call when a plugin asks for more memory than its cap.
#[derive(Debug, thiserror::Error)]
#[error("plugin tried to grow its memory to {desired} bytes, above its cap of {max} bytes")]
pub struct MemoryCapExceeded {
    desired: usize,
    max: usize,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.peak = self.peak.max(desired);
        if desired > self.max {
            return Err(MemoryCapExceeded { desired, max: self.max }.into());
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(maximum.is_none_or(|max| desired <= max))
    }
}

/// A store for one plugin instance: capped memory, captured output, and the
/// host services.
pub(crate) fn new_store(runtime: &Runtime) -> Store<Sandbox> {
    let mut store =
        Store::new(runtime.engine(), Sandbox::new(runtime.options().max_memory_bytes, runtime.verifier().clone()));
    store.limiter(|sandbox| &mut sandbox.limits);
    // Installed once per store: the deadline itself lives in the store's
    // data, so arming a call allocates nothing (a new callback per call
    // cost about 0.3 µs in the server).
    store.epoch_deadline_callback(|store| {
        Ok(if Instant::now() >= store.data().deadline { UpdateDeadline::Interrupt } else { UpdateDeadline::Yield(1) })
    });
    store
}

/// Gives the next call on `store` until `deadline` from now: the guest yields
/// to the executor at every epoch tick and is interrupted once it has passed.
pub(crate) fn arm_deadline(store: &mut Store<Sandbox>, deadline: Duration) {
    store.data_mut().deadline = Instant::now() + deadline;
    store.set_epoch_deadline(1);
}

/// Runs `f` on a fresh instance of `pre` under `deadline`, then drops the
/// instance. `plugin` names the plugin in logs and errors.
pub async fn call<R>(
    runtime: &Runtime,
    plugin: &str,
    pre: &InstancePre<Sandbox>,
    deadline: Duration,
    f: impl AsyncFnOnce(&mut Store<Sandbox>, &Instance) -> wasmtime::Result<R>,
) -> Result<R, CallError> {
    let max_memory = runtime.options().max_memory_bytes;
    let mut store = new_store(runtime);
    let started = Instant::now();
    arm_deadline(&mut store, deadline);
    let result = match pre.instantiate_async(&mut store).await {
        Ok(instance) => f(&mut store, &instance).await.map_err(|e| classify(e, deadline, max_memory, &store)),
        Err(e) => Err(instantiate_error(e, max_memory)),
    };
    forward_output(plugin, &mut store);
    tracing::trace!(plugin, elapsed_us = started.elapsed().as_micros() as u64, "plugin call");
    result
}

/// Explains why a new instance could not be made.
pub(crate) fn instantiate_error(error: wasmtime::Error, max_memory: usize) -> CallError {
    match error.downcast_ref::<MemoryCapExceeded>() {
        Some(_) => CallError::MemoryCap { cap_mib: max_memory >> 20 },
        None => CallError::Instantiate(format!("{error:#}")),
    }
}

/// Drives `future` to completion from synchronous code (loading, the CLI,
/// tests) on a private current-thread runtime, in a thread of its own so
/// that it works whether or not the caller is inside a tokio runtime.
pub fn block_on<F: std::future::Future + Send>(future: F) -> F::Output
where
    F::Output: Send,
{
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            // Building a current-thread runtime only fails when the OS refuses
            // its timer or I/O driver: nothing can run without them.
            runtime.map(|rt| rt.block_on(future))
        });
        match worker.join() {
            Ok(Ok(output)) => output,
            Ok(Err(error)) => panic!("cannot start an async runtime for a plugin call: {error}"),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Turns a failed call's error into what went wrong, for the operator.
pub(crate) fn classify(
    error: wasmtime::Error,
    deadline: Duration,
    max_memory: usize,
    store: &Store<Sandbox>,
) -> CallError {
    if error.downcast_ref::<MemoryCapExceeded>().is_some() {
        return CallError::MemoryCap { cap_mib: max_memory >> 20 };
    }
    if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return CallError::Deadline(deadline);
    }
    let trap = error.root_cause().to_string();
    // A Rust guest's panic message goes to stderr just before the trap: it
    // is the most useful thing to show the operator.
    // Only what this call printed: an instance may have served others.
    let data = store.data();
    let stderr = data.stderr.contents();
    let fresh = stderr.get(data.forwarded[1]..).unwrap_or_default();
    CallError::Trap { trap, guest_said: panic_message(&String::from_utf8_lossy(fresh)) }
}

/// The guest's last words on stderr, without Rust's backtrace hint, on one
/// line and at most [`GUEST_SAID_MAX`] characters.
fn panic_message(stderr: &str) -> Option<String> {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
        .collect();
    // A Rust panic is "thread '..' panicked at FILE:LINE:COL:" then the message.
    let start = lines.iter().rposition(|l| l.contains("panicked at")).unwrap_or(lines.len().saturating_sub(1));
    let said = lines.get(start..)?.join(" ");
    (!said.is_empty()).then(|| said.chars().take(GUEST_SAID_MAX).collect())
}

/// Longest guest message quoted in an error.
const GUEST_SAID_MAX: usize = 400;

/// Sends what the guest printed since the last time to the log, a line an
/// event, under its name.
pub(crate) fn forward_output(plugin: &str, store: &mut Store<Sandbox>) {
    let data = store.data_mut();
    for (i, (stream, pipe)) in [("stdout", &data.stdout), ("stderr", &data.stderr)].into_iter().enumerate() {
        let bytes = pipe.contents();
        let Some(new) = bytes.get(data.forwarded[i]..).filter(|new| !new.is_empty()) else { continue };
        for line in String::from_utf8_lossy(new).lines().filter(|l| !l.is_empty()) {
            tracing::info!(plugin, stream, "{line}");
        }
        data.forwarded[i] = bytes.len();
    }
}

#[cfg(test)]
mod tests {
    use super::panic_message;

    #[test]
    fn panic_messages_are_found() {
        let stderr = "thread '<unnamed>' panicked at src/lib.rs:12:9:\nboom\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(panic_message(stderr).as_deref(), Some("thread '<unnamed>' panicked at src/lib.rs:12:9: boom"));
        assert_eq!(panic_message("just a line\n").as_deref(), Some("just a line"));
        assert_eq!(panic_message(""), None);
    }
}
