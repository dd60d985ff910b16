//! Tollgate: a WebAssembly policy host for Kubernetes admission and
//! API-gateway traffic.
//!
//! The modules are layers; each imports only the ones listed before it
//! (`host/tests/layers.rs` fails on a cycle):
//!
//! * [`runtime`]: the Wasm runtime. The contract in `wit/` as Rust types,
//!   the one wasmtime engine and its limits, the sandbox every call runs in,
//!   warm instances, configured snapshots.
//! * [`plugins`]: a plugin file checked, compiled (kept in the on-disk
//!   cache) and loaded; the registry of plugins; a directory rescanned
//!   against what serves; the bundled reference plugins.
//! * [`metrics`] and [`throttle`] (rate limits for log lines clients cause).
//! * [`cluster`]: the cluster side, generated from plugin metadata: webhook
//!   configurations, docs, and keeping the cluster's configurations in step.
//! * [`state`] (what requests read: the registry serving now, call budgets,
//!   readiness), [`listener`] (the accept loop every listener shares) and
//!   [`tls`].
//! * [`lifecycle`]: the one owner of what serves: the first load, rescans
//!   after file events, and the swap, in order against webhook sync.
//! * [`admission`]: the AdmissionReview format and the decision on a review
//!   (no HTTP), and the HTTPS listener that reads reviews.
//! * [`gateway`]: the HTTP gateway: route, allowlists, forward.
//! * [`status`]: `/metrics`, `/healthz`, `/readyz`, `/plugins`.
//! * [`serve`]: `tollgate serve`, all of the above started together.
//! * [`cli`]: what the other commands run (`tollgate eval`).

pub mod admission;
pub mod cli;
pub mod cluster;
pub mod gateway;
pub mod lifecycle;
pub mod listener;
pub mod metrics;
pub mod plugins;
pub mod runtime;
pub mod serve;
pub mod state;
pub mod status;
pub mod throttle;
pub mod tls;
