//! What the commands other than `serve` run, as library code the binary
//! (`main.rs`) calls: [`eval`] decides one request offline.

pub mod eval;
