//! Test guest: never returns from `metadata`; the host's deadline must stop it.

wit_bindgen::generate!({ path: "../../../wit", world: "admission-plugin" });

use exports::tollgate::plugin::admission::Guest;
use tollgate::plugin::types::{AdmissionMetadata, AdmissionRequest, Verdict};

struct LoopInMetadata;

impl Guest for LoopInMetadata {
    fn metadata() -> AdmissionMetadata {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }

    fn configure(_settings: String) -> Result<(), String> {
        Ok(())
    }

    fn validate(_req: AdmissionRequest) -> Verdict {
        unreachable!("never loaded")
    }
}

export!(LoopInMetadata);
