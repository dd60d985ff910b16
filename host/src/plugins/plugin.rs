//! A loaded plugin: its compiled template, metadata and settings, and the
//! typed calls the servers make into it. Calls run on the plugin's warm
//! instances (see [`crate::runtime::instances`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::Store;

use crate::plugins::error::PluginError;
use crate::runtime::contract::Kind;
use crate::runtime::contract::types::{AdmissionRequest, AllowDecision, Identity, RequestHead, RouteDecision, Verdict};
use crate::runtime::engine::Runtime;
use crate::runtime::error::CallError;
use crate::runtime::instances::{Guest, Instances};
use crate::runtime::metadata::PluginMetadata;
use crate::runtime::sandbox::{self, Sandbox};

/// The least time kept between a plugin's deadline and its webhook timeout.
const MIN_DEADLINE_MARGIN: Duration = Duration::from_millis(100);

/// What an allowlist is asked about one gateway request.
#[derive(Debug, Clone, Copy)]
pub struct AllowCheck<'a> {
    /// The request head, as the client sent it.
    pub request: &'a RequestHead,
    /// Name of the route plugin the request is on.
    pub route: &'a str,
    /// Who the caller is, as far as established.
    pub identity: &'a Identity,
    /// The body, when the allowlist inspects bodies and the request has one.
    pub body: Option<&'a str>,
}

/// A plugin that passed every load check and can serve.
pub struct Plugin {
    pub(crate) origin: PathBuf,
    pub(crate) hash: String,
    pub(crate) contract_version: String,
    pub(crate) metadata: PluginMetadata,
    pub(crate) settings: String,
    /// True when `pre` is a configured snapshot: calls skip `configure`.
    pub(crate) configured: bool,
    pub(crate) settings_file: Option<PathBuf>,
    pub(crate) loaded_at: std::time::SystemTime,
    pub(crate) from_cache: bool,
    pub(crate) instances: Instances,
    pub(crate) runtime: Arc<Runtime>,
}

impl Plugin {
    /// Warm instances this plugin keeps between calls now.
    pub fn idle_instances(&self) -> usize {
        self.instances.idle()
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name())
            .field("kind", &self.kind())
            .field("origin", &self.origin)
            .field("hash", &self.hash)
            .finish()
    }
}

impl Plugin {
    /// The plugin's declared name.
    pub fn name(&self) -> &str {
        &self.metadata.info().name
    }

    /// The plugin's declared version.
    pub fn version(&self) -> &str {
        &self.metadata.info().version
    }

    /// Admission, route or allowlist.
    pub fn kind(&self) -> Kind {
        self.metadata.kind()
    }

    /// Everything the plugin declared.
    pub fn metadata(&self) -> &PluginMetadata {
        &self.metadata
    }

    /// The file it was loaded from (`bundled:<file>` for built-in plugins).
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// SHA-256 of the component, hex.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The contract version it was built against.
    pub fn contract_version(&self) -> &str {
        &self.contract_version
    }

    /// When this version was loaded.
    pub fn loaded_at(&self) -> std::time::SystemTime {
        self.loaded_at
    }

    /// True when its compiled code came from the on-disk cache.
    pub fn from_cache(&self) -> bool {
        self.from_cache
    }

    /// The settings it was configured with (JSON text).
    pub fn settings_json(&self) -> &str {
        &self.settings
    }

    /// True when requests run on a snapshot taken after `configure`.
    pub fn is_snapshot(&self) -> bool {
        self.configured
    }

    /// The settings file it was configured from, if any.
    pub fn settings_file(&self) -> Option<&Path> {
        self.settings_file.as_deref()
    }

    /// How long an admission call may run: the webhook's `timeoutSeconds`
    /// less a margin (a fifth, at least 100 ms), so the answer (or the
    /// failure policy's) reaches the API server before it gives up. Other
    /// calls get the engine's call deadline.
    pub fn call_deadline(&self) -> Duration {
        match self.metadata.webhook() {
            Some(webhook) => {
                let timeout = Duration::from_secs(webhook.timeout_seconds.into());
                timeout.saturating_sub((timeout / 5).max(MIN_DEADLINE_MARGIN))
            }
            None => self.runtime.options().call_deadline,
        }
    }

    /// Decides an admission request (admission plugins, and allowlists that
    /// declare a webhook) within [`Plugin::call_deadline`]. Blocking; servers
    /// use [`Plugin::validate_async`].
    pub fn validate(&self, request: &AdmissionRequest) -> Result<Verdict, PluginError> {
        sandbox::block_on(self.validate_async(request, self.call_deadline()))
    }

    /// Decides an admission request within `deadline` (what is left of the
    /// plugin's deadline after waiting for a free instance).
    pub async fn validate_async(&self, request: &AdmissionRequest, deadline: Duration) -> Result<Verdict, PluginError> {
        let admits = match self.kind() {
            Kind::Admission => true,
            Kind::Allowlist => self.metadata.webhook().is_some(),
            Kind::Route => false,
        };
        if !admits {
            return Err(self.wrong_kind(Kind::Admission));
        }
        let verdict = self
            .invoke(deadline, async |store, guest| match guest {
                Guest::Admission(guest) => guest.call_validate(store, request).await,
                Guest::Allowlist(guest) => guest.call_check_admission(store, request).await,
                Guest::Route(_) => Err(unexpected_world()),
            })
            .await?;
        if verdict.patch.is_some() && !self.metadata.webhook().is_some_and(|w| w.mutating) {
            return Err(PluginError::BadAnswer {
                plugin: self.name().to_string(),
                reason: "returned a patch but does not declare itself mutating".into(),
            });
        }
        Ok(verdict)
    }

    /// Decides where a gateway request goes (route plugins). Blocking.
    pub fn route(&self, request: &RequestHead) -> Result<RouteDecision, PluginError> {
        sandbox::block_on(self.route_async(request))
    }

    /// Decides where a gateway request goes (route plugins).
    pub async fn route_async(&self, request: &RequestHead) -> Result<RouteDecision, PluginError> {
        if self.kind() != Kind::Route {
            return Err(self.wrong_kind(Kind::Route));
        }
        self.invoke(self.call_deadline(), async |store, guest| {
            let Guest::Route(guest) = guest else { return Err(unexpected_world()) };
            guest.call_route(store, request).await
        })
        .await
    }

    /// Checks a gateway request against the list (allowlist plugins). Blocking.
    pub fn check_request(&self, check: &AllowCheck<'_>) -> Result<AllowDecision, PluginError> {
        sandbox::block_on(self.check_request_async(check))
    }

    /// Checks a gateway request against the list (allowlist plugins).
    pub async fn check_request_async(&self, check: &AllowCheck<'_>) -> Result<AllowDecision, PluginError> {
        if self.kind() != Kind::Allowlist {
            return Err(self.wrong_kind(Kind::Allowlist));
        }
        self.invoke(self.call_deadline(), async |store, guest| {
            let Guest::Allowlist(guest) = guest else { return Err(unexpected_world()) };
            guest.call_check_request(store, check.request, check.route, check.identity, check.body).await
        })
        .await
    }

    /// Runs `f` on one of the plugin's instances, configuring it first when
    /// the plugin has no configured snapshot (so every call starts
    /// unconfigured): the one place a call's kind-independent steps happen.
    async fn invoke<R>(
        &self,
        deadline: Duration,
        f: impl AsyncFnOnce(&mut Store<Sandbox>, &Guest) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let called = self
            .instances
            .call(self.name(), deadline, async |store, guest| {
                if !self.configured
                    && let Err(message) = guest.configure(store, &self.settings).await?
                {
                    return Ok(Err(message));
                }
                Ok(Ok(f(store, guest).await?))
            })
            .await;
        match called {
            Ok(Ok(answer)) => Ok(answer),
            // The message reaches the client (a denial's text): it must not
            // quote the settings, which may hold secrets.
            Ok(Err(message)) => {
                let message = crate::plugins::redact::plugin_message(&message, &self.settings);
                Err(PluginError::Configure { plugin: self.name().to_string(), message })
            }
            Err(source) => Err(self.call_error(source)),
        }
    }

    fn call_error(&self, source: CallError) -> PluginError {
        PluginError::Call { plugin: self.name().to_string(), source }
    }

    fn wrong_kind(&self, expected: Kind) -> PluginError {
        PluginError::WrongKind { plugin: self.name().to_string(), expected, actual: self.kind() }
    }
}

/// A guest whose functions are not its kind's: the loader matched them, so
/// this is a host bug, reported as a failed call rather than a panic.
fn unexpected_world() -> wasmtime::Error {
    wasmtime::Error::msg("plugin instance does not export its kind's interface")
}
