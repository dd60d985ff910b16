//! Tollgate: a WebAssembly policy host for Kubernetes admission and
//! API-gateway traffic.
//!
//! Plugins are WebAssembly components built against the contract in `wit/`
//! ([`contract`]). The [`engine`] holds the one wasmtime engine and its
//! limits. The [`loader`] checks and compiles plugin files, runs their
//! `configure` once into a [`snapshot`], keeps compiled code in the
//! [`cache`], and fills a [`registry`]. Requests run on a plugin's warm
//! [`instances`], each a [`sandbox`]. An admission request is decided in
//! [`admission`] (the AdmissionReview format and the decision, no HTTP);
//! [`serve`] runs the HTTPS admission listener ([`tls`] the certificates),
//! the gateway and the metrics listener on the accept loop of [`listener`],
//! over the shared [`state`]; [`watch`] and [`reload`] swap plugins live
//! when their files change.
//! [`webhooks`] and [`docs`] are generated from plugin metadata, and
//! [`sync`] keeps the cluster's webhook configurations in step.

pub mod admission;
pub mod bundled;
pub mod cache;
pub mod compile_cache;
pub mod contract;
pub mod docs;
pub mod engine;
pub mod epoch;
pub mod error;
pub mod eval;
pub mod gateway;
mod guest_output;
pub mod instances;
pub mod jwt;
pub mod lifecycle;
pub mod listener;
pub mod loader;
pub mod metadata;
pub mod metrics;
pub mod plugin;
pub mod redact;
pub mod registry;
pub mod reload;
pub mod sandbox;
pub mod serve;
pub mod snapshot;
pub mod state;
pub mod summary;
pub mod sync;
pub mod throttle;
pub mod tls;
pub mod validation;
pub mod watch;
pub mod webhooks;
