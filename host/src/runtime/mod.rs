//! The Wasm runtime: the plugin contract (`wit/`) as Rust types
//! ([`contract`], [`metadata`]), the one wasmtime [`engine`] a host runs
//! with its limits and [`epoch`] ticker, the [`sandbox`] every call runs in
//! (WASI with no capabilities, the host services of [`jwt`], the guest's
//! output in [`guest_output`]), a plugin's warm [`instances`], configured
//! [`snapshot`]s, and compiled functions kept in memory between
//! compilations ([`function_cache`]). Nothing here knows files, HTTP or the
//! cluster.

pub mod contract;
pub mod engine;
pub mod epoch;
pub mod error;
pub mod function_cache;
mod guest_output;
pub mod instances;
pub mod jwt;
pub mod metadata;
pub mod sandbox;
pub mod snapshot;
