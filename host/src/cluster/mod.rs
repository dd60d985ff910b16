//! The cluster side, generated from plugin metadata (the single source):
//! webhook configurations ([`webhooks`]), documentation ([`docs`]), and
//! keeping the cluster's configurations in step with what serves ([`sync`]).

pub mod docs;
pub mod sync;
pub mod webhooks;
