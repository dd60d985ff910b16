//! The path of every guest the tests load, by name: the test guests of
//! `tests/guests/` (built by this crate's build script, so only builds that
//! run tests compile them) and the reference plugins of `plugins/` (built by
//! the `tollgate` crate, which bundles them). Constants are named after the
//! crate: `tests/guests/misbehave` is [`MISBEHAVE`].

include!(concat!(env!("OUT_DIR"), "/guests.rs"));
