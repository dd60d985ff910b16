//! `email-allowlist`: only listed e-mail addresses may pass (oauth2-proxy's
//! authenticated-emails file, with live settings). Comparison is
//! case-insensitive and exact; the identity comes from the gateway (a trusted
//! SSO header or a verified token's claim), never from a client header here.

use std::cell::RefCell;

use serde::Deserialize;

wit_bindgen::generate!({ path: "../../wit", world: "allowlist-plugin" });

use exports::tollgate::plugin::allowlist::Guest;
use tollgate::plugin::types::{
    AdmissionRequest, AllowDecision, AllowlistMetadata, Identity, PluginInfo, RequestHead, SubjectKind, Verdict,
};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Settings {
    /// Allowed addresses, one per entry.
    #[serde(default)]
    emails: Vec<String>,
}

thread_local! {
    /// Lower-cased, trimmed addresses.
    static EMAILS: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

struct EmailAllowlist;

fn decision(allowed: bool, reason: &str) -> AllowDecision {
    AllowDecision { allowed, reason: reason.into() }
}

/// An address with exactly one `@` and text on both sides.
fn well_formed(address: &str) -> bool {
    let mut parts = address.split('@');
    matches!((parts.next(), parts.next(), parts.next()), (Some(l), Some(d), None) if !l.is_empty() && !d.is_empty())
}

impl Guest for EmailAllowlist {
    fn metadata() -> AllowlistMetadata {
        AllowlistMetadata {
            info: PluginInfo {
                name: "email-allowlist".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                summary: "Only listed e-mail addresses may pass.".into(),
                doc: "Allows a request when the identity's e-mail, compared case-insensitively, is \
                      in the list. Requests with no established e-mail are denied."
                    .into(),
                settings_doc: Some("`emails`: the allowed addresses.".into()),
            },
            subject: SubjectKind::Email,
            routes: vec![],
            webhook: None,
        }
    }

    fn configure(settings: String) -> Result<(), String> {
        let parsed: Settings = serde_json::from_str(&settings).map_err(|e| format!("invalid settings: {e}"))?;
        let mut emails = Vec::with_capacity(parsed.emails.len());
        for entry in &parsed.emails {
            let address = entry.trim().to_lowercase();
            if !well_formed(&address) {
                return Err(format!("invalid settings: {entry:?} is not an e-mail address"));
            }
            emails.push(address);
        }
        EMAILS.with(|e| *e.borrow_mut() = Some(emails));
        Ok(())
    }

    fn check_request(_req: RequestHead, identity: Identity) -> AllowDecision {
        let Some(email) = identity.email else { return decision(false, "no-email") };
        let email = email.trim().to_lowercase();
        if !well_formed(&email) {
            return decision(false, "email-malformed");
        }
        EMAILS.with(|e| match e.borrow().as_ref() {
            Some(list) if list.contains(&email) => decision(true, "email-listed"),
            Some(_) => decision(false, "email-not-listed"),
            None => decision(false, "not-configured"),
        })
    }

    fn check_admission(_req: AdmissionRequest) -> Verdict {
        // The metadata declares no webhook, so the host never calls this.
        Verdict {
            allowed: false,
            code: Some(400),
            message: Some("email-allowlist does not handle admission requests".into()),
            warnings: vec![],
            patch: None,
        }
    }
}

export!(EmailAllowlist);
