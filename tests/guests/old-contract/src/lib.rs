//! Test guest: built against a contract version the host does not support;
//! the host must refuse it with "built against X, host supports Y".

wit_bindgen::generate!({
    inline: "
        package tollgate:plugin@0.0.1;
        interface admission {
            metadata: func() -> string;
        }
        world old {
            export admission;
        }
    ",
    world: "old",
});

struct OldContract;

impl exports::tollgate::plugin::admission::Guest for OldContract {
    fn metadata() -> String {
        "old".into()
    }
}

export!(OldContract);
