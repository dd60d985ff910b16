//! Configured snapshots: a plugin's `configure(settings)` runs once, at
//! load, inside wasmtime's Wizer, which rewrites the component so that its
//! memory starts in the configured state. Every request then instantiates
//! that snapshot (copy-on-write) and skips `configure`: no settings parsing
//! on the request path, and still no state shared between requests.
//!
//! Wizer drives the guest through wasmtime's async API, so snapshots are
//! taken on a separate async engine with its own epoch ticker; the result is
//! plain component bytes that the serving engine compiles as usual.

use std::time::Duration;

use wasmtime::component::{Component, Instance, Linker};
use wasmtime::{Config, Engine, OptLevel, Store};

use crate::runtime::contract::Kind;
use crate::runtime::epoch::EpochTicker;
use crate::runtime::error::CallError;
use crate::runtime::sandbox::{self, Sandbox, StoreFactory};

/// Why no snapshot was made.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// `configure` trapped, ran past its deadline or its memory cap.
    #[error(transparent)]
    Call(CallError),
    /// `configure` refused the settings, with the plugin's message.
    #[error("{0}")]
    Refused(String),
    /// Wizer could not instrument or rewrite this component: the plugin can
    /// still serve, configured on every call instead.
    #[error("cannot snapshot this component: {0}")]
    Unsupported(String),
}

/// The async engine snapshots run on.
pub struct Snapshotter {
    engine: Engine,
    linker: Linker<Sandbox>,
    /// Stores as serving makes them (memory cap, output, deadline), on
    /// this engine.
    stores: StoreFactory,
    _ticker: EpochTicker,
}

impl Snapshotter {
    /// An engine for snapshots, with the same memory cap as serving.
    pub fn new(max_memory_bytes: usize) -> Result<Self, String> {
        let mut config = Config::new();
        // The instrumented component runs once (configure, then Wizer reads
        // its state back): compiling it fast beats compiling it well.
        config.wasm_component_model(true).epoch_interruption(true).cranelift_opt_level(OptLevel::None);
        // Instrumenting a new version of a plugin keeps most of its functions.
        config
            .enable_incremental_compilation(std::sync::Arc::new(
                crate::runtime::function_cache::FunctionCache::default(),
            ))
            .map_err(|e| format!("{e:#}"))?;
        let engine = Engine::new(&config).map_err(|e| format!("{e:#}"))?;
        let linker = sandbox::linker(&engine).map_err(|e| format!("{e:#}"))?;
        let _ticker = EpochTicker::start(engine.clone());
        let stores = StoreFactory::new(engine.clone(), max_memory_bytes, Default::default());
        Ok(Self { engine, linker, stores, _ticker })
    }

    /// Runs `configure(settings)` on `component` and returns the configured
    /// component. Blocking: call it from a blocking thread.
    pub fn configure(
        &self,
        plugin: &str,
        component: &[u8],
        kind: Kind,
        contract_version: &str,
        settings: &str,
        deadline: Duration,
    ) -> Result<Vec<u8>, SnapshotError> {
        let interface = kind.export_name(contract_version);
        sandbox::block_on(self.run(plugin, component, &interface, settings, deadline))
    }

    async fn run(
        &self,
        plugin: &str,
        component: &[u8],
        interface: &str,
        settings: &str,
        deadline: Duration,
    ) -> Result<Vec<u8>, SnapshotError> {
        let unsupported = |e: wasmtime::Error| SnapshotError::Unsupported(format!("{e:#}"));
        let wizer = wasmtime_wizer::Wizer::new();
        let (context, instrumented) = wizer.instrument_component(component).map_err(unsupported)?;
        let instrumented = Component::new(&self.engine, &instrumented).map_err(unsupported)?;

        let mut store = self.stores.store(plugin);
        // The call's deadline covers instantiation too: a component's start
        // function is guest code.
        let configured = sandbox::run(&mut store, deadline, deadline, async |store| {
            self.call_configure(store, &instrumented, interface, settings).await
        })
        .await;
        let instance = match configured {
            Ok((instance, Ok(()))) => instance,
            Ok((_, Err(message))) => return Err(SnapshotError::Refused(message)),
            Err(error) => return Err(SnapshotError::Call(error)),
        };
        // Reading the state back is Wizer's work, not the plugin's: it gets
        // its own generous deadline.
        let read_back = sandbox::run(&mut store, SNAPSHOT_DEADLINE, SNAPSHOT_DEADLINE, async |store| {
            let mut state = wasmtime_wizer::WasmtimeWizerComponent { store, instance };
            wizer.snapshot_component(&context, &mut state).await
        });
        read_back.await.map_err(|error| match error {
            // Wizer's own failure, not a trap of the plugin's: say what it is.
            CallError::Trap { trap, .. } => SnapshotError::Unsupported(trap),
            other => SnapshotError::Unsupported(other.to_string()),
        })
    }

    async fn call_configure(
        &self,
        store: &mut Store<Sandbox>,
        component: &Component,
        interface: &str,
        settings: &str,
    ) -> wasmtime::Result<(Instance, Result<(), String>)> {
        let instance = self.linker.instantiate_async(&mut *store, component).await?;
        let missing = || wasmtime::format_err!("the component does not export {interface}#configure");
        let (_, exported) = instance.get_export(&mut *store, None, interface).ok_or_else(missing)?;
        let (_, func) = instance.get_export(&mut *store, Some(&exported), "configure").ok_or_else(missing)?;
        let configure = instance.get_typed_func::<(&str,), (Result<(), String>,)>(&mut *store, func)?;
        let (accepted,) = configure.call_async(&mut *store, (settings,)).await?;
        Ok((instance, accepted))
    }
}

/// How long Wizer may take to read a configured instance's state back.
const SNAPSHOT_DEADLINE: Duration = Duration::from_secs(60);
