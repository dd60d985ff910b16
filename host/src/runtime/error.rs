//! Errors of the Wasm runtime: the engine could not be built, or a call
//! into a plugin failed. Each says what failed.

use std::time::Duration;

/// The engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// wasmtime refused the configuration.
    #[error("could not configure the WebAssembly engine: {0}")]
    Config(String),
}

/// A call into a plugin failed. The plugin did not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The call ran out of time (epoch or timer); the duration is what it
    /// had when it started, the plugin's deadline less the time already
    /// spent on the request (waiting for a call, reading the body).
    #[error("ran past its deadline ({} ms were left for the call)", .0.as_millis())]
    Deadline(Duration),
    /// The guest asked for more memory than its cap.
    #[error("exceeded its memory cap of {cap_mib} MiB")]
    MemoryCap {
        /// The cap, in MiB.
        cap_mib: usize,
    },
    /// The guest trapped (a panic, `unreachable`, out-of-bounds access...).
    #[error("trapped: {trap}{}", guest_said.as_ref().map(|s| format!(" (guest said: {s})")).unwrap_or_default())]
    Trap {
        /// The trap, as wasmtime reports it.
        trap: String,
        /// The guest's last line on stderr, e.g. its panic message.
        guest_said: Option<String>,
    },
    /// The instance could not be created (pool exhausted, start trapped...).
    #[error("could not be instantiated: {0}")]
    Instantiate(String),
}
