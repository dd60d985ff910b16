//! A plugin's warm instances. Making an instance costs more than most
//! decisions (about 8 µs for a Rust guest, most of it wiring up the WASI
//! imports and resetting the pool slot), so after a call that ended cleanly
//! the instance is kept and the next call of the same plugin reuses it.
//!
//! Reuse is safe for what a plugin can observe: its memory starts as the
//! configured snapshot and only its own earlier calls have changed it (the
//! contract tells authors not to rely on state between calls). An instance is
//! dropped rather than kept when its call failed in any way (a trapped
//! instance cannot be called again; one stopped at its deadline or memory cap
//! is in an unknown state), after `--calls-per-instance` calls
//! ([`Pool::calls_per_instance`]), or when its memory grew past [`RETIRE_GROWTH`] over its start.
//! Plugins without a configured snapshot are configured on every call, so
//! they always get a fresh instance.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::AsContextMut;
use wasmtime::Store;
use wasmtime::component::{Instance, InstancePre};

use crate::runtime::contract::{Kind, admission, allowlist, route};
use crate::runtime::error::CallError;
use crate::runtime::metadata::PluginMetadata;
use crate::runtime::sandbox::{self, Sandbox, StoreFactory};

/// Growth of an instance's memory past its size when made after which it is
/// not reused: its pages stay dirty while idle, and growth that keeps going
/// is a leak.
pub const RETIRE_GROWTH: usize = 2 << 20;

/// Idle instances one plugin keeps. Calls rarely overlap by more than the
/// number of worker threads; this leaves room for bursts of long calls.
const MAX_IDLE_PER_PLUGIN: usize = 16;

/// Where a kind's functions live in the component, resolved once at load.
pub(crate) enum Exports {
    Admission(admission::GuestIndices),
    Route(route::GuestIndices),
    Allowlist(allowlist::GuestIndices),
}

impl Exports {
    /// Where `kind`'s functions are in the component `pre` instantiates.
    pub(crate) fn of(kind: Kind, pre: &InstancePre<Sandbox>) -> wasmtime::Result<Self> {
        Ok(match kind {
            Kind::Admission => Exports::Admission(admission::GuestIndices::new(pre)?),
            Kind::Route => Exports::Route(route::GuestIndices::new(pre)?),
            Kind::Allowlist => Exports::Allowlist(allowlist::GuestIndices::new(pre)?),
        })
    }

    /// The typed functions of `instance`. Type-checks every signature, so
    /// it is done once per instance, not per call.
    pub(crate) fn load(&self, mut store: impl AsContextMut, instance: &Instance) -> wasmtime::Result<Guest> {
        Ok(match self {
            Exports::Admission(i) => Guest::Admission(i.load(store.as_context_mut(), instance)?),
            Exports::Route(i) => Guest::Route(i.load(store.as_context_mut(), instance)?),
            Exports::Allowlist(i) => Guest::Allowlist(i.load(store.as_context_mut(), instance)?),
        })
    }
}

/// An instance's exported functions, ready to call.
pub(crate) enum Guest {
    Admission(admission::Guest),
    Route(route::Guest),
    Allowlist(allowlist::Guest),
}

impl Guest {
    /// Calls the instance's `metadata`, whatever its kind.
    pub(crate) async fn metadata(&self, store: &mut Store<Sandbox>) -> wasmtime::Result<PluginMetadata> {
        Ok(match self {
            Guest::Admission(guest) => PluginMetadata::Admission(guest.call_metadata(store).await?),
            Guest::Route(guest) => PluginMetadata::Route(guest.call_metadata(store).await?),
            Guest::Allowlist(guest) => PluginMetadata::Allowlist(guest.call_metadata(store).await?),
        })
    }

    /// Calls the instance's `configure` with `settings`, whatever its kind:
    /// `Err(message)` when the plugin refuses them.
    pub(crate) async fn configure(
        &self,
        store: &mut Store<Sandbox>,
        settings: &str,
    ) -> wasmtime::Result<Result<(), String>> {
        match self {
            Guest::Admission(guest) => guest.call_configure(store, settings).await,
            Guest::Route(guest) => guest.call_configure(store, settings).await,
            Guest::Allowlist(guest) => guest.call_configure(store, settings).await,
        }
    }
}

/// An instance between calls.
struct Warm {
    store: Store<Sandbox>,
    guest: Guest,
    calls: u32,
    /// Memory size when it was made.
    start_memory: usize,
}

/// What every plugin's instances share: how stores are made, how many
/// calls an instance serves, and the pool slots idle instances may take.
pub(crate) struct Pool {
    /// Stores with the runtime's engine, memory cap and JWT verifier.
    pub stores: StoreFactory,
    /// Calls one instance serves before it is dropped (1: never reused).
    pub calls_per_instance: u32,
    /// Slots of the engine's pool idle instances may hold.
    pub idle_slots: IdleSlots,
}

/// A count of the pool slots that idle instances may still take. The pool is
/// sized for every permitted call to run at once with this many idle beside
/// them, so keeping instances never makes a new one fail.
pub(crate) struct IdleSlots {
    free: AtomicUsize,
}

impl IdleSlots {
    pub(crate) fn new(slots: usize) -> Self {
        Self { free: AtomicUsize::new(slots) }
    }

    /// Takes `n` slots if that many are free.
    pub(crate) fn acquire(&self, n: usize) -> bool {
        self.free.fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| free.checked_sub(n)).is_ok()
    }

    /// Gives `n` slots back.
    pub(crate) fn release(&self, n: usize) {
        self.free.fetch_add(n, Ordering::AcqRel);
    }
}

/// One plugin's template and its idle instances.
pub struct Instances {
    pre: InstancePre<Sandbox>,
    exports: Exports,
    pool: Arc<Pool>,
    /// False: every call gets a fresh instance (plugins configured per call,
    /// or reuse switched off).
    reuse: bool,
    idle: Mutex<Vec<Warm>>,
}

impl Instances {
    /// Instances of `pre`. `reusable` is false for a plugin whose calls
    /// configure it first, which must start from an unconfigured instance.
    pub(crate) fn new(pool: Arc<Pool>, pre: InstancePre<Sandbox>, exports: Exports, reusable: bool) -> Self {
        let reuse = reusable && pool.calls_per_instance > 1;
        Self { pre, exports, pool, reuse, idle: Mutex::new(Vec::new()) }
    }

    /// Idle instances kept now.
    pub(crate) fn idle(&self) -> usize {
        self.idle.lock().map_or(0, |idle| idle.len())
    }

    /// Runs `f` under `deadline` on an idle instance, or a new one when none
    /// is idle; afterwards the instance is kept for the next call when it
    /// may be reused. `plugin` names the plugin in logs and errors.
    pub(crate) async fn call<R>(
        &self,
        plugin: &str,
        deadline: Duration,
        f: impl AsyncFnOnce(&mut Store<Sandbox>, &Guest) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        let started = std::time::Instant::now();
        let mut warm = match self.take() {
            Some(warm) => warm,
            None => self.make(plugin, deadline).await?,
        };
        // Making the instance counts against the call's deadline.
        let left = deadline.saturating_sub(started.elapsed());
        let guest = &warm.guest;
        let result = sandbox::run(&mut warm.store, left, deadline, async |store| f(store, guest).await).await;
        if result.is_ok() && self.reuse {
            warm.calls += 1;
            self.keep(warm);
        }
        result
    }

    /// A new instance, made under `deadline`.
    async fn make(&self, plugin: &str, deadline: Duration) -> Result<Warm, CallError> {
        let (mut store, instance) = sandbox::instantiate(&self.pool.stores, plugin, &self.pre, deadline).await?;
        let guest = self.exports.load(&mut store, &instance).map_err(|e| CallError::Instantiate(format!("{e:#}")))?;
        let start_memory = store.data().memory_peak();
        Ok(Warm { store, guest, calls: 0, start_memory })
    }

    /// The most recently used idle instance (its pages are likeliest to be
    /// in the CPU's caches).
    fn take(&self) -> Option<Warm> {
        let warm = self.idle.lock().ok()?.pop()?;
        self.pool.idle_slots.release(1);
        Some(warm)
    }

    /// Keeps `warm` for the next call, unless it has served its share, grew,
    /// or there is no room; else drops it.
    fn keep(&self, warm: Warm) {
        let worn = warm.calls >= self.pool.calls_per_instance
            || warm.store.data().memory_peak() > warm.start_memory.saturating_add(RETIRE_GROWTH);
        if worn {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else { return };
        if idle.len() < MAX_IDLE_PER_PLUGIN && self.pool.idle_slots.acquire(1) {
            idle.push(warm);
        }
    }
}

impl Drop for Instances {
    fn drop(&mut self) {
        let idle = self.idle.get_mut().map_or(0, |idle| idle.len());
        self.pool.idle_slots.release(idle);
    }
}

impl std::fmt::Debug for Instances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instances").field("reuse", &self.reuse).field("idle", &self.idle()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::IdleSlots;

    #[test]
    fn idle_slots_are_never_overdrawn() {
        let slots = IdleSlots::new(2);
        assert!(slots.acquire(1));
        assert!(slots.acquire(1));
        assert!(!slots.acquire(1), "a third slot would let idle instances starve running calls");
        slots.release(2);
        assert!(slots.acquire(2));
        assert!(!slots.acquire(1));
    }
}
