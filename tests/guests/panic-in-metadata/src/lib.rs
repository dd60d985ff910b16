//! Test guest: traps (a Rust panic) in `metadata`.

wit_bindgen::generate!({ path: "../../../wit", world: "admission-plugin" });

use exports::tollgate::plugin::admission::Guest;
use tollgate::plugin::types::{AdmissionMetadata, AdmissionRequest, Verdict};

struct PanicInMetadata;

impl Guest for PanicInMetadata {
    fn metadata() -> AdmissionMetadata {
        panic!("metadata is broken on purpose")
    }

    fn configure(_settings: String) -> Result<(), String> {
        Ok(())
    }

    fn validate(_req: AdmissionRequest) -> Verdict {
        unreachable!("never loaded")
    }
}

export!(PanicInMetadata);
