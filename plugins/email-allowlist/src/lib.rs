//! `email-allowlist`: oauth2-proxy's authenticated-emails file as a plugin
//! (`../shared/reference`, section 2). Addresses compare case-insensitively;
//! `example.com` allows that domain, `.example.com` its subdomains, `*`
//! everyone (with a loud warning). Lists can differ per route.
//!
//! The identity is the e-mail the route established (a verified token's
//! claim), else the `identityHeader` set by the SSO proxy in front, read only
//! when the TCP peer is one of `trustedProxies`. A client-sent copy of that
//! header is never trusted and never passed upstream.

use std::cell::RefCell;
use std::collections::BTreeMap;

use gateway_rules::{Cidrs, EmailList};
use serde::Deserialize;

wit_bindgen::generate!({ path: "../../wit", world: "allowlist-plugin" });

use exports::tollgate::plugin::allowlist::Guest;
use tollgate::plugin::types::{
    AdmissionRequest, AllowDecision, AllowlistMetadata, Identity, PluginInfo, RequestHead, SubjectKind, Verdict,
};

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListSetting {
    /// Entries: addresses, domain rules, `*`.
    #[serde(default)]
    emails: Vec<String>,
    /// The same, as the text of an authenticated-emails file (one entry per
    /// line, `#` comments).
    #[serde(default)]
    list: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Settings {
    /// The list for every route not named in `routes`: entries...
    #[serde(default)]
    emails: Vec<String>,
    /// ...and/or an authenticated-emails file's text.
    #[serde(default)]
    list: String,
    /// Lists for particular route plugins, by name.
    #[serde(default)]
    routes: BTreeMap<String, ListSetting>,
    /// Header the SSO proxy puts the authenticated e-mail in.
    #[serde(default)]
    identity_header: Option<String>,
    /// Addresses of that proxy (CIDRs); the header is read only from them.
    #[serde(default)]
    trusted_proxies: Vec<String>,
}

struct Config {
    default: EmailList,
    routes: BTreeMap<String, EmailList>,
    identity_header: Option<String>,
    trusted: Cidrs,
}

thread_local! {
    static CONFIG: RefCell<Option<Config>> = const { RefCell::new(None) };
}

fn decision(allowed: bool, reason: &str, remove_headers: Vec<String>) -> AllowDecision {
    AllowDecision { allowed, reason: reason.into(), remove_headers }
}

fn parse_list(setting: &ListSetting, scope: &str) -> Result<EmailList, String> {
    let list = EmailList::parse(setting.emails.iter().map(String::as_str).chain(setting.list.lines()))
        .map_err(|e| format!("invalid settings: {scope}: {e}"))?;
    if list.allow_all {
        // Goes to Tollgate's log under this plugin's name.
        eprintln!("WARNING: {scope} lists '*': every authenticated address passes, whatever else is listed");
    }
    Ok(list)
}

fn configure(settings: Settings) -> Result<Config, String> {
    let default = parse_list(&ListSetting { emails: settings.emails, list: settings.list }, "the default list")?;
    let mut routes = BTreeMap::new();
    for (route, setting) in &settings.routes {
        routes.insert(route.clone(), parse_list(setting, &format!("routes.{route}"))?);
    }
    let trusted =
        Cidrs::parse(&settings.trusted_proxies).map_err(|e| format!("invalid settings: trustedProxies: {e}"))?;
    if settings.identity_header.is_some() && trusted.is_empty() {
        return Err("invalid settings: identityHeader needs trustedProxies (the SSO proxy's addresses)".into());
    }
    Ok(Config { default, routes, identity_header: settings.identity_header, trusted })
}

fn check(config: &Config, req: &RequestHead, route: &str, identity: &Identity) -> AllowDecision {
    let list = config.routes.get(route).unwrap_or(&config.default);
    let mut remove = Vec::new();
    let mut email = identity.email.clone();
    if let Some(name) = &config.identity_header {
        let headers = req.headers.iter().map(|h| (h.name.as_str(), h.value.as_str()));
        let values = gateway_rules::header_values(headers, name);
        let from_proxy = gateway_rules::peer_ip(&req.client_addr).is_some_and(|ip| config.trusted.contains(ip));
        if !from_proxy {
            // Sent by the client itself: neither trusted nor passed on.
            if !values.is_empty() {
                remove.push(name.clone());
            }
        } else if email.is_none() {
            match values.as_slice() {
                [one] => email = Some(one.to_string()),
                [] => {}
                _ => return decision(false, "several-identity-headers", vec![name.clone()]),
            }
        }
    }
    let Some(email) = email else { return decision(false, "no-identity", remove) };
    match list.allows(&email) {
        Ok(()) => decision(true, "email-listed", remove),
        Err(reason) => decision(false, reason, remove),
    }
}

struct EmailAllowlist;

impl Guest for EmailAllowlist {
    fn metadata() -> AllowlistMetadata {
        AllowlistMetadata {
            info: PluginInfo {
                name: "email-allowlist".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                summary: "Only listed e-mail addresses may pass.".into(),
                doc: "oauth2-proxy's authenticated-emails semantics: addresses compared case-insensitively, \
                      `example.com` for that domain, `.example.com` for its subdomains, `*` for everyone \
                      (warned about). The e-mail is the one the route established (a verified token's claim), \
                      else the SSO proxy's header, read only from trusted proxies; a client-sent copy of that \
                      header is removed. Requests without an e-mail are denied."
                    .into(),
                settings_doc: Some(
                    "`emails` (entries) and/or `list` (an authenticated-emails file's text): the default \
                     list. `routes`: `{<route plugin>: {emails, list}}` lists for particular routes. \
                     `identityHeader` (e.g. `X-Forwarded-Email`) with `trustedProxies` (CIDRs of the SSO \
                     proxy)."
                        .into(),
                ),
            },
            subject: SubjectKind::Email,
            routes: vec![],
            webhook: None,
            inspect_body: false,
        }
    }

    fn configure(settings: String) -> Result<(), String> {
        let parsed: Settings = serde_json::from_str(&settings).map_err(|e| format!("invalid settings: {e}"))?;
        let config = configure(parsed)?;
        CONFIG.with(|c| *c.borrow_mut() = Some(config));
        Ok(())
    }

    fn check_request(req: RequestHead, route: String, identity: Identity, _body: Option<String>) -> AllowDecision {
        CONFIG.with(|c| match c.borrow().as_ref() {
            Some(config) => check(config, &req, &route, &identity),
            None => decision(false, "not-configured", vec![]),
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
