//! Plugins as the host holds them: a file checked step by step and loaded
//! ([`loader`], compiled code kept on disk in [`disk_cache`], metadata
//! checked as the API server would in [`validation`], settings kept out of
//! messages by [`redact`]) into a [`plugin::Plugin`]; the set serving, by
//! name, kind and path ([`registry`]); a directory rescanned against what
//! serves ([`rescan`]); the reference plugins built into the binary
//! ([`bundled`]); and what the host says about them ([`summary`]). When
//! loads happen and what serves is the lifecycle's.

pub mod bundled;
pub mod disk_cache;
pub mod error;
pub mod loader;
pub mod plugin;
pub mod redact;
pub mod registry;
pub mod rescan;
pub mod summary;
pub mod validation;
