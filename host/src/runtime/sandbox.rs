//! The host side of a plugin instance: its [`Store`] data (WASI with no
//! capabilities, stdout/stderr sent to the log, a memory cap, the host services),
//! the deadline every call runs under, and how a failed call is explained.
//! Every instance is made by [`instantiate`] and every call runs through
//! [`run`]; [`call`] is both on a fresh instance (loading does this), and
//! serving keeps warm instances between calls (the `instances` module).

use std::time::{Duration, Instant};

use wasmtime::component::{Instance, InstancePre, ResourceTable};
use wasmtime::{ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use std::sync::Arc;

use crate::runtime::contract::services;
use crate::runtime::error::CallError;
use crate::runtime::guest_output::GuestOutput;
use crate::runtime::jwt::Verifier;

/// The host state of one plugin call.
pub struct Sandbox {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: MemoryCap,
    stdout: GuestOutput,
    stderr: GuestOutput,
    verifier: Arc<Verifier>,
    /// When the running call must stop; see [`begin_call`].
    deadline: Instant,
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl Sandbox {
    /// Host state for calls of `plugin`: WASI with no capabilities, output
    /// logged under the plugin's name, memory capped at `max_memory_bytes`.
    pub(crate) fn new(plugin: &str, max_memory_bytes: usize, verifier: Arc<Verifier>) -> Self {
        let plugin: Arc<str> = plugin.into();
        let stdout = GuestOutput::new(plugin.clone(), "stdout", false);
        let stderr = GuestOutput::new(plugin, "stderr", true);
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
            verifier,
            deadline: Instant::now(),
        }
    }

    /// Largest memory size the guest asked for so far, in bytes.
    pub(crate) fn memory_peak(&self) -> usize {
        self.limits.peak
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

/// The linker every plugin is instantiated against on `engine`: WASI
/// (with no capabilities, see [`Sandbox::new`]) and the host services. The
/// serving engine and the snapshot engine both link through it.
pub fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<wasmtime::component::Linker<Sandbox>> {
    let mut linker = wasmtime::component::Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    services::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |sandbox| sandbox)?;
    Ok(linker)
}

/// How a runtime makes stores: its engine, the memory cap, and the JWT
/// verifier (and caches) every call shares. Cheap to clone.
#[derive(Clone)]
pub struct StoreFactory {
    engine: wasmtime::Engine,
    max_memory: usize,
    verifier: Arc<Verifier>,
}

impl StoreFactory {
    /// Stores on `engine`, memory capped at `max_memory` bytes.
    pub fn new(engine: wasmtime::Engine, max_memory: usize, verifier: Arc<Verifier>) -> Self {
        Self { engine, max_memory, verifier }
    }

    /// A store for one instance of `plugin`.
    pub(crate) fn store(&self, plugin: &str) -> Store<Sandbox> {
        new_store(&self.engine, Sandbox::new(plugin, self.max_memory, self.verifier.clone()))
    }
}

/// A store for one instance: capped memory, logged output, the host
/// services, and the deadline check every epoch tick.
fn new_store(engine: &wasmtime::Engine, sandbox: Sandbox) -> Store<Sandbox> {
    let mut store = Store::new(engine, sandbox);
    store.limiter(|sandbox| &mut sandbox.limits);
    // Installed once per store: the deadline itself lives in the store's
    // data, so arming a call allocates nothing (a new callback per call
    // cost about 0.3 µs in the server).
    store.epoch_deadline_callback(|store| {
        Ok(if Instant::now() >= store.data().deadline { UpdateDeadline::Interrupt } else { UpdateDeadline::Yield(1) })
    });
    store
}

/// A new instance of `pre` in a store of its own, made under `deadline`.
/// `plugin` names the plugin in logs and errors.
pub(crate) async fn instantiate(
    stores: &StoreFactory,
    plugin: &str,
    pre: &InstancePre<Sandbox>,
    deadline: Duration,
) -> Result<(Store<Sandbox>, Instance), CallError> {
    let mut store = stores.store(plugin);
    begin_call(&mut store, deadline);
    let made = until_deadline(deadline, pre.instantiate_async(&mut store)).await;
    end_call(&store);
    match made {
        Ok(instance) => Ok((store, instance)),
        Err(error) => Err(explain(error, deadline, &store, Failed::Making)),
    }
}

/// Runs one call on `store` for at most `left`, the part of the call's
/// `deadline` (the figure errors report) not spent yet. A failed call's
/// error is explained ([`explain`]).
pub(crate) async fn run<R>(
    store: &mut Store<Sandbox>,
    left: Duration,
    deadline: Duration,
    call: impl AsyncFnOnce(&mut Store<Sandbox>) -> wasmtime::Result<R>,
) -> Result<R, CallError> {
    begin_call(store, left);
    let result = until_deadline(left, call(store)).await;
    let result = result.map_err(|e| explain(e, deadline, store, Failed::Calling));
    end_call(store);
    result
}

/// Starts the next call on `store`: it has until `deadline` from now (the
/// guest yields to the executor at every epoch tick and is interrupted once
/// the deadline has passed), and its output starts a new per-call cap.
fn begin_call(store: &mut Store<Sandbox>, deadline: Duration) {
    let data = store.data_mut();
    data.deadline = Instant::now() + deadline;
    data.stdout.begin_call();
    data.stderr.begin_call();
    store.set_epoch_deadline(1);
}

/// Ends a call on `store`: the guest's last unfinished output lines go to
/// the log.
fn end_call(store: &Store<Sandbox>) {
    store.data().stdout.end_call();
    store.data().stderr.end_call();
}

/// Runs `f` on a fresh instance of `pre` under `deadline`, then drops the
/// instance. `plugin` names the plugin in logs and errors.
pub async fn call<R>(
    stores: &StoreFactory,
    plugin: &str,
    pre: &InstancePre<Sandbox>,
    deadline: Duration,
    f: impl AsyncFnOnce(&mut Store<Sandbox>, &Instance) -> wasmtime::Result<R>,
) -> Result<R, CallError> {
    let started = Instant::now();
    let (mut store, instance) = instantiate(stores, plugin, pre, deadline).await?;
    // Making the instance counts against the call's deadline.
    let left = deadline.saturating_sub(started.elapsed());
    let result = run(&mut store, left, deadline, async |store| f(store, &instance).await).await;
    tracing::trace!(plugin, elapsed_us = started.elapsed().as_micros() as u64, "plugin call");
    result
}

/// Runs `call` (a call into the guest) for at most `deadline`.
///
/// The epoch deadline of [`begin_call`] stops a guest that computes, but
/// not one waiting inside a host call: a guest sleeping through WASI clocks
/// (`subscribe-duration` and `poll`) waits on a host timer, where no epoch
/// check runs. So the call is also raced against the deadline; when that
/// wins, the call's future is dropped, which makes wasmtime unwind the
/// guest's stack, and the instance is never reused. Clocks are the only
/// thing a guest can wait on (it has no sockets, files or stdin), and at
/// most until its deadline.
///
/// Most calls finish in their first poll (the guest neither waits nor
/// reaches an epoch tick), so the timer is armed only for a call that did
/// not: registering one for every call was the likeliest part of the
/// microsecond the hardening added to each admission request (BENCHMARKS.md,
/// "Hardening costs").
async fn until_deadline<R>(deadline: Duration, call: impl Future<Output = wasmtime::Result<R>>) -> wasmtime::Result<R> {
    let ends = tokio::time::Instant::now() + deadline;
    let mut call = std::pin::pin!(call);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(call.as_mut().poll(cx))).await;
    if let std::task::Poll::Ready(result) = first {
        return result;
    }
    match tokio::time::timeout_at(ends, call).await {
        Ok(result) => result,
        Err(_elapsed) => Err(Trap::Interrupt.into()),
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

/// What failed: making an instance, or a call on one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Failed {
    Making,
    Calling,
}

/// Turns a failed call's (or instantiation's) error into what went wrong,
/// for the operator: its deadline, the store's memory cap, or else what
/// the guest or wasmtime said.
fn explain(error: wasmtime::Error, deadline: Duration, store: &Store<Sandbox>, failed: Failed) -> CallError {
    if error.downcast_ref::<MemoryCapExceeded>().is_some() {
        return CallError::MemoryCap { cap_mib: store.data().limits.max >> 20 };
    }
    if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return CallError::Deadline(deadline);
    }
    if failed == Failed::Making {
        return CallError::Instantiate(format!("{error:#}"));
    }
    let trap = error.root_cause().to_string();
    // A Rust guest's panic message goes to stderr just before the trap: it
    // is the most useful thing to show the operator. Only what this call
    // printed: an instance may have served others.
    CallError::Trap { trap, guest_said: panic_message(&store.data().stderr.call_tail()) }
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
