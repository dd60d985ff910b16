//! Keeping the cluster's webhook configurations in step with the plugins
//! serving (`tollgate serve --sync-webhooks`).
//!
//! The configurations Tollgate syncs are Tollgate's: after a sync they hold
//! exactly the webhooks of the plugins that serve, whoever created or edited
//! them. Each is server-side applied under the field manager `tollgate`
//! (taking over fields others set); since server-side apply keeps the list
//! entries another manager owns (`webhooks` is a map keyed by name), entries
//! that are not Tollgate's are then removed with a JSON patch whose `test`
//! operations guard each removal. A configuration with no entry left is
//! deleted.
//!
//! The configurations are watched (LIST, then WATCH from its
//! resourceVersion, by `metadata.name`): a change Tollgate did not write (a
//! delete, an edit by another tool) is repaired at once. Failures are retried
//! with backoff capped at [`MAX_BACKOFF`], and a watch that connects again
//! after an outage retries at once, so the cluster converges within seconds
//! of the API server's return.
//!
//! Ordering, so the API server never calls a path that does not answer:
//! a plugin is registered only once it serves (the caller installs the new
//! registry first, then asks for it here), and a removed plugin is
//! unregistered before it stops serving (the caller asks for the registry
//! without it, waits for that to be applied, then swaps).
//!
//! Health ([`SyncHealth`]) feeds readiness and metrics: a host whose sync
//! never succeeded is not ready, with the reason.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt as _;
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use kube::core::ClusterResourceScope;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::cluster::webhooks::{self, GenerateError, MANAGER, WebhookConfigs, WebhookOptions};
use crate::metrics::SyncMetrics;
use crate::plugins::registry::Registry;
use crate::plugins::summary::SyncHealth;
use crate::throttle::Throttle;

/// First retry delay; doubled after each failure up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest delay between retries: an API server that comes back is synced
/// within this, even before the watch notices.
pub const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// Delay before listing again after a watch fails.
const WATCH_RETRY: Duration = Duration::from_secs(1);
/// A watch is ended by the API server after this and started again.
const WATCH_SECONDS: u32 = 290;

/// A failing sync repeats every few seconds: log it a few times per window.
static FAILURE_LOG: Throttle = Throttle::new(2);
/// A failing watch is retried every second: the same.
static WATCH_FAILURE_LOG: Throttle = Throttle::new(2);

/// Why syncing could not start.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// No usable kubeconfig or in-cluster configuration.
    #[error("cannot configure the Kubernetes client: {0}")]
    Config(String),
    /// The webhook options are invalid.
    #[error(transparent)]
    Options(#[from] GenerateError),
}

/// Where the Kubernetes client's configuration comes from.
#[derive(Debug, Clone, Default)]
pub enum ClusterConfig {
    /// In-cluster service account, else `$KUBECONFIG` or `~/.kube/config`.
    #[default]
    Infer,
    /// This kubeconfig file, current context.
    Kubeconfig(PathBuf),
}

/// What should be registered, numbered so callers can wait for it.
#[derive(Debug, Clone)]
struct Desired {
    generation: u64,
    configs: WebhookConfigs,
}

/// The handle the host keeps: ask for a registry to be registered, and wait
/// until it is.
pub struct WebhookSync {
    options: WebhookOptions,
    desired: watch::Sender<Desired>,
    applied: watch::Receiver<u64>,
    health: Arc<SyncHealth>,
}

impl WebhookSync {
    /// Builds the Kubernetes client and starts the tasks that watch and
    /// apply configurations. Nothing is applied until [`WebhookSync::want`].
    pub async fn start(
        cluster: ClusterConfig,
        options: WebhookOptions,
        metrics: SyncMetrics,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, SyncError> {
        options.check()?;
        let config = match cluster {
            ClusterConfig::Infer => kube::Config::infer().await.map_err(|e| SyncError::Config(e.to_string()))?,
            ClusterConfig::Kubeconfig(file) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(&file)
                    .map_err(|e| SyncError::Config(format!("{}: {e}", file.display())))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                    .await
                    .map_err(|e| SyncError::Config(format!("{}: {e}", file.display())))?
            }
        };
        let cluster = config.cluster_url.to_string();
        tracing::info!(%cluster, config = %options.config_name, "syncing webhook configurations");
        let client = kube::Client::try_from(config).map_err(|e| SyncError::Config(e.to_string()))?;
        let (desired, desired_rx) = watch::channel(Desired { generation: 0, configs: WebhookConfigs::default() });
        let (applied_tx, applied) = watch::channel(0);
        let (seen_tx, seen_rx) = mpsc::unbounded_channel();
        let health = Arc::new(SyncHealth::default());
        let name = options.config_name.clone();
        let watcher =
            Watcher { client: client.clone(), cluster: cluster.clone(), name: name.clone(), health: health.clone() };
        tokio::spawn(watcher.clone().run::<ValidatingWebhookConfiguration>(seen_tx.clone(), shutdown.clone()));
        tokio::spawn(watcher.run::<MutatingWebhookConfiguration>(seen_tx, shutdown.clone()));
        let applier = Applier {
            client,
            cluster,
            config_name: name,
            metrics,
            applied: applied_tx,
            health: health.clone(),
            written: HashMap::new(),
        };
        tokio::spawn(applier.run(desired_rx, seen_rx, shutdown));
        Ok(Self { options, desired, applied, health })
    }

    /// Asks for the configurations of `registry` to be applied. Returns the
    /// generation to wait for, or `None` when that is already what is wanted.
    pub fn want(&self, registry: &Registry) -> Option<u64> {
        let configs = match webhooks::generate(registry, &self.options) {
            Ok(configs) => configs,
            Err(error) => {
                // The options were checked at start, so this is a bug.
                tracing::error!(%error, "cannot generate webhook configurations");
                return None;
            }
        };
        let mut generation = None;
        self.desired.send_if_modified(|desired| {
            // Generation 0 means "nothing asked yet": the first ask always applies.
            let changed = desired.generation == 0 || desired.configs != configs;
            if changed {
                desired.generation += 1;
                desired.configs = configs;
                generation = Some(desired.generation);
            }
            changed
        });
        generation
    }

    /// Waits until `generation` (or a later one) is applied, or `timeout`.
    /// Returns whether it was.
    pub async fn wait_applied(&self, generation: u64, timeout: Duration) -> bool {
        let mut applied = self.applied.clone();
        tokio::time::timeout(timeout, applied.wait_for(|done| *done >= generation)).await.is_ok_and(|r| r.is_ok())
    }

    /// How syncing goes, as readiness reads it.
    pub fn health(&self) -> Arc<SyncHealth> {
        self.health.clone()
    }
}

/// Which of the two configurations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ConfigKind {
    Validating,
    Mutating,
}

/// What a watch saw of a configuration: its resourceVersion, or `None` when
/// it does not exist.
#[derive(Debug)]
struct Seen {
    kind: ConfigKind,
    resource_version: Option<String>,
}

/// A webhook configuration type, as sync handles it.
trait Configuration:
    kube::Resource<DynamicType = (), Scope = ClusterResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + serde::Serialize
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    const KIND: ConfigKind;
}

impl Configuration for ValidatingWebhookConfiguration {
    const KIND: ConfigKind = ConfigKind::Validating;
}

impl Configuration for MutatingWebhookConfiguration {
    const KIND: ConfigKind = ConfigKind::Mutating;
}

/// The task that writes to the API server.
struct Applier {
    client: kube::Client,
    cluster: String,
    config_name: String,
    metrics: SyncMetrics,
    applied: watch::Sender<u64>,
    health: Arc<SyncHealth>,
    /// The resourceVersions each configuration had after Tollgate's writes
    /// of its last sync (an apply and a clean-up are two; `None`: deleted);
    /// anything else seen was written by others.
    written: HashMap<ConfigKind, Vec<Option<String>>>,
}

/// Repairs that follow each other closely mean another writer keeps
/// changing the configuration (a second replica with other plugins, a tool
/// managing it): they are spaced out, so the two do not rewrite each other
/// as fast as round trips allow.
#[derive(Debug, Default)]
struct Repairs {
    /// Repairs each within [`REPAIR_QUIET`] of the one before.
    in_a_row: u32,
    last: Option<Instant>,
}

/// Repairs further apart than this are unrelated.
const REPAIR_QUIET: Duration = Duration::from_secs(10);
/// Repairs in a row made at once before they are spaced out.
const REPAIRS_AT_ONCE: u32 = 3;
/// The longest wait between repairs in a row.
const MAX_REPAIR_DELAY: Duration = Duration::from_secs(30);

impl Repairs {
    /// How long to wait before the repair asked for now.
    fn delay(&mut self, now: Instant) -> Duration {
        self.in_a_row = match self.last {
            Some(last) if now.duration_since(last) < REPAIR_QUIET => self.in_a_row + 1,
            _ => 0,
        };
        self.last = Some(now);
        let Some(beyond) = self.in_a_row.checked_sub(REPAIRS_AT_ONCE) else { return Duration::ZERO };
        if beyond == 0 {
            tracing::warn!(
                "another writer keeps changing Tollgate's webhook configuration (a replica serving other plugins, \
                 or a tool managing it); repairs are now spaced out"
            );
        }
        (FIRST_BACKOFF * 2u32.saturating_pow(beyond.min(8))).min(MAX_REPAIR_DELAY)
    }
}

impl Applier {
    async fn run(
        mut self,
        mut desired: watch::Receiver<Desired>,
        mut seen: mpsc::UnboundedReceiver<Seen>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut backoff = FIRST_BACKOFF;
        let mut repairs = Repairs::default();
        // Something to apply; whether the last attempt failed; when the next
        // attempt may be made.
        let (mut pending, mut failing, mut retry_at): (bool, bool, Option<Instant>) = (false, false, None);
        loop {
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = desired.changed() => {
                    if changed.is_err() { return }
                    // A newer state is applied at once, instead of retrying the old one.
                    (pending, retry_at, backoff) = (true, None, FIRST_BACKOFF);
                }
                Some(seen) = seen.recv() => {
                    if failing {
                        // The API server answers again: retry now, not at the
                        // next backoff step.
                        retry_at = None;
                    } else if !pending && !self.wrote(&seen) {
                        tracing::info!(config = %self.config_name, kind = ?seen.kind, "webhook configuration changed by someone else; restoring it");
                        pending = true;
                        let delay = repairs.delay(Instant::now());
                        retry_at = (!delay.is_zero()).then(|| Instant::now() + delay);
                    }
                }
                () = retry => retry_at = None,
                _ = shutdown.changed() => return,
            }
            if !pending || retry_at.is_some() || desired.borrow().generation == 0 {
                continue;
            }
            let target = desired.borrow_and_update().clone();
            match self.apply(&target.configs).await {
                Ok(()) => {
                    (pending, failing, backoff) = (false, false, FIRST_BACKOFF);
                    self.succeeded();
                    tracing::info!(generation = target.generation, webhooks = ?target.configs.webhook_names(), "webhook configurations applied");
                    let _ = self.applied.send(target.generation);
                }
                Err(error) => {
                    self.failed(&error, backoff);
                    failing = true;
                    retry_at = Some(Instant::now() + backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Whether Tollgate's own last sync left the configuration as `seen`.
    fn wrote(&self, seen: &Seen) -> bool {
        self.written.get(&seen.kind).is_some_and(|versions| versions.contains(&seen.resource_version))
    }

    async fn apply(&mut self, configs: &WebhookConfigs) -> Result<(), String> {
        let validating = self.apply_one(configs.validating.as_ref()).await?;
        self.written.insert(ConfigKind::Validating, validating);
        let mutating = self.apply_one(configs.mutating.as_ref()).await?;
        self.written.insert(ConfigKind::Mutating, mutating);
        Ok(())
    }

    /// Makes the configuration of type `K` exactly `desired` (deleted when
    /// `None`); returns its resourceVersion after each of Tollgate's writes.
    async fn apply_one<K: Configuration>(&self, desired: Option<&K>) -> Result<Vec<Option<String>>, String> {
        let api = Api::<K>::all(self.client.clone());
        let name = self.config_name.as_str();
        let describe = |e: kube::Error| describe(&e, &self.cluster);
        let Some(object) = desired else {
            return match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => Ok(vec![None]),
                Err(kube::Error::Api(status)) if status.code == 404 => Ok(vec![None]),
                Err(error) => Err(describe(error)),
            };
        };
        // force: Tollgate owns these objects; take fields another manager set.
        let applied = api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(object)).await;
        let applied = applied.map_err(describe)?;
        let applied_version = applied.meta().resource_version.clone();
        let Some(operations) = foreign_parts(object, &applied) else {
            return Ok(vec![applied_version]);
        };
        let cleaned = api
            .patch(name, &PatchParams { field_manager: Some(MANAGER.into()), ..Default::default() }, &operations.patch)
            .await
            .map_err(describe)?;
        tracing::info!(config = name, removed = ?operations.removed, "removed what another tool left in Tollgate's configuration");
        Ok(vec![applied_version, cleaned.meta().resource_version.clone()])
    }

    fn succeeded(&self) {
        self.metrics.syncs.get_or_create(&crate::metrics::SyncLabels { result: "applied" }).inc();
        self.metrics.healthy.set(1);
        let now = SystemTime::now();
        self.metrics.last_success.set(now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64));
        self.health.update(|status| {
            if status.error.take().is_some() {
                tracing::info!("webhook sync works again");
            }
            status.ever_applied = true;
            status.last_success = Some(now);
        });
    }

    fn failed(&self, error: &str, retry_in: Duration) {
        self.metrics.syncs.get_or_create(&crate::metrics::SyncLabels { result: "failed" }).inc();
        self.metrics.healthy.set(0);
        self.health.update(|status| status.error = Some(error.to_string()));
        if let Some(suppressed) = FAILURE_LOG.admit() {
            tracing::warn!(
                error,
                retry_in_ms = retry_in.as_millis() as u64,
                suppressed,
                "cannot apply webhook configurations; retrying"
            );
        }
    }
}

/// What must go from an applied configuration so it holds exactly what
/// Tollgate asked for, and the patch that removes it.
struct Removal {
    patch: Patch<()>,
    /// What goes, for the log: `<webhook>` or `<webhook>.<field>`.
    removed: Vec<String>,
}

/// Finds what other managers keep in the applied configuration (server-side
/// apply leaves what they own): webhooks Tollgate does not serve, and, on
/// Tollgate's own webhooks, top-level fields Tollgate leaves unset
/// (`matchConditions`, selectors) that hold something. Server defaults
/// (empty selectors) and fields inside Tollgate's fields (a `caBundle` an
/// injector fills in `clientConfig`) stay.
fn foreign_parts<K: Configuration>(desired: &K, applied: &K) -> Option<Removal> {
    let entries = |object: &K| serde_json::to_value(object).ok()?.get("webhooks")?.as_array().cloned();
    let wanted: HashMap<String, serde_json::Value> = entries(desired)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|entry| Some((entry.get("name")?.as_str()?.to_string(), entry)))
        .collect();
    let mut removals = Vec::new();
    for (index, entry) in entries(applied).unwrap_or_default().iter().enumerate() {
        let Some(name) = entry.get("name").and_then(|n| n.as_str()) else { continue };
        let Some(ours) = wanted.get(name) else {
            removals.push((index, name.to_string(), None));
            continue;
        };
        let Some(fields) = entry.as_object() else { continue };
        for (field, value) in fields {
            let empty = value.is_null()
                || value.as_object().is_some_and(|o| o.is_empty())
                || value.as_array().is_some_and(|a| a.is_empty());
            if ours.get(field).is_none() && !empty {
                removals.push((index, name.to_string(), Some(field.clone())));
            }
        }
    }
    (!removals.is_empty()).then(|| Removal {
        removed: removals
            .iter()
            .map(|(_, name, field)| field.as_ref().map_or_else(|| name.clone(), |f| format!("{name}.{f}")))
            .collect(),
        patch: removal(&removals),
    })
}

/// A JSON patch removing each (index, webhook name, field or the whole
/// webhook), each guarded by a `test` of the webhook's name so a list
/// changed meanwhile fails the patch instead of losing the wrong entry.
/// From the last, so earlier indices stay valid.
fn removal(parts: &[(usize, String, Option<String>)]) -> Patch<()> {
    let operations = parts.iter().rev().flat_map(|(index, name, field)| {
        let entry = format!("/webhooks/{index}");
        let target = match field {
            Some(field) => format!("{entry}/{}", field.replace('~', "~0").replace('/', "~1")),
            None => entry.clone(),
        };
        [
            serde_json::json!({"op": "test", "path": format!("{entry}/name"), "value": name}),
            serde_json::json!({"op": "remove", "path": target}),
        ]
    });
    let operations = serde_json::Value::Array(operations.collect());
    // The operations above are well formed; an empty patch changes nothing.
    Patch::Json(serde_json::from_value(operations).unwrap_or_default())
}

/// Watches Tollgate's configurations and reports what it sees.
#[derive(Clone)]
struct Watcher {
    client: kube::Client,
    cluster: String,
    name: String,
    health: Arc<SyncHealth>,
}

impl Watcher {
    /// Watches the configuration of type `K` and reports what it sees (after
    /// every LIST, and at each change), until shutdown.
    async fn run<K: Configuration>(self, seen: mpsc::UnboundedSender<Seen>, mut shutdown: watch::Receiver<bool>) {
        let api = Api::<K>::all(self.client.clone());
        // By name, which is also what the RBAC rule restricted to that name
        // requires of list and watch.
        let selector = format!("metadata.name={}", self.name);
        let report = |object: Option<&K>| {
            let resource_version = object.and_then(|o| o.meta().resource_version.clone());
            seen.send(Seen { kind: K::KIND, resource_version }).is_ok()
        };
        loop {
            let watched = async {
                let list = api.list(&ListParams::default().fields(&selector)).await?;
                self.health.update(|status| status.watch_error = None);
                if !report(list.items.first()) {
                    return Ok(());
                }
                let from = list.metadata.resource_version.unwrap_or_default();
                let params = WatchParams::default().fields(&selector).timeout(WATCH_SECONDS);
                let mut events = std::pin::pin!(api.watch(&params, &from).await?);
                while let Some(event) = events.next().await {
                    let reported = match event? {
                        WatchEvent::Added(object) | WatchEvent::Modified(object) => report(Some(&object)),
                        WatchEvent::Deleted(_) => report(None),
                        WatchEvent::Bookmark(_) => true,
                        // Expired (410 Gone) and the like: list again.
                        WatchEvent::Error(status) if status.code == 410 => return Ok(()),
                        WatchEvent::Error(status) => return Err(kube::Error::Api(status)),
                    };
                    if !reported {
                        return Ok(());
                    }
                }
                Ok::<(), kube::Error>(())
            };
            tokio::select! {
                result = watched => if let Err(error) = result { self.failed(&error) },
                _ = shutdown.changed() => return,
            }
            if seen.is_closed() {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(WATCH_RETRY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    fn failed(&self, error: &kube::Error) {
        let error = describe(error, &self.cluster);
        if let Some(suppressed) = WATCH_FAILURE_LOG.admit() {
            tracing::warn!(config = %self.name, error, suppressed, "cannot watch the webhook configuration (changes others make are not repaired meanwhile); trying again");
        }
        self.health.update(|status| status.watch_error = Some(error));
    }
}

/// A failed call in words: what the API server answered, or why it could
/// not be reached, naming it.
fn describe(error: &kube::Error, cluster: &str) -> String {
    match error {
        kube::Error::Api(status) => {
            let reason = if status.reason.is_empty() { String::new() } else { format!(" {}", status.reason) };
            format!("the API server at {cluster} answered {}{reason}: {}", status.code, status.message)
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            format!("cannot reach the API server at {cluster}: {}", chain(error))
        }
        other => format!("talking to the API server at {cluster}: {}", chain(other)),
    }
}

/// An error and its causes, each said once.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_entries_are_removed_from_the_last_each_after_a_test_of_its_name() {
        let Patch::Json(patch) = removal(&[(1, "a.x.io".into(), None), (3, "b.x.io".into(), None)]) else { panic!() };
        let ops = serde_json::to_value(&patch).unwrap();
        assert_eq!(
            ops,
            serde_json::json!([
                {"op": "test", "path": "/webhooks/3/name", "value": "b.x.io"},
                {"op": "remove", "path": "/webhooks/3"},
                {"op": "test", "path": "/webhooks/1/name", "value": "a.x.io"},
                {"op": "remove", "path": "/webhooks/1"},
            ])
        );
    }

    #[test]
    fn fields_others_set_on_tollgates_webhooks_go_but_defaults_and_injected_ca_stay() {
        let config = |hooks: serde_json::Value| -> ValidatingWebhookConfiguration {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "tollgate"}, "webhooks": hooks})).unwrap()
        };
        let hook = |name: &str, extra: serde_json::Value| {
            let mut hook = serde_json::json!({"name": name, "sideEffects": "None", "admissionReviewVersions": ["v1"],
                                              "clientConfig": {"url": "https://t:1/p"}});
            hook.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            hook
        };
        let desired = config(serde_json::json!([hook("a.x.io", serde_json::json!({}))]));
        let applied = config(serde_json::json!([
            hook(
                "a.x.io",
                serde_json::json!({
                "clientConfig": {"url": "https://t:1/p", "caBundle": "Y2E="},
                "objectSelector": {},
                "matchConditions": [{"name": "skip", "expression": "false"}]})
            ),
            hook("stale.x.io", serde_json::json!({})),
        ]));
        let removal = foreign_parts(&desired, &applied).unwrap();
        assert_eq!(removal.removed, ["a.x.io.matchConditions", "stale.x.io"]);
        assert!(foreign_parts(&desired, &desired).is_none());
    }

    #[test]
    fn repairs_in_a_row_are_spaced_out_and_a_quiet_spell_resets_them() {
        let mut repairs = Repairs::default();
        let start = Instant::now();
        let delays: Vec<Duration> = (0..6).map(|i| repairs.delay(start + Duration::from_millis(100 * i))).collect();
        assert_eq!(&delays[..3], &[Duration::ZERO; 3], "the first repairs are made at once");
        assert_eq!(&delays[3..], &[FIRST_BACKOFF, FIRST_BACKOFF * 2, FIRST_BACKOFF * 4]);
        assert_eq!(repairs.delay(start + REPAIR_QUIET * 2), Duration::ZERO);
    }

    #[test]
    fn errors_name_the_api_server_and_say_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused (os error 111)");
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(io);
        let text = describe(&kube::Error::Service(boxed), "https://10.0.0.1:6443/");
        assert_eq!(
            text,
            "cannot reach the API server at https://10.0.0.1:6443/: ServiceError: Connection refused (os error 111)"
        );
        let status = kube::core::Status::failure("Unauthorized", "Unauthorized").with_code(401);
        let text = describe(&kube::Error::Api(Box::new(status)), "https://k:6443/");
        assert_eq!(text, "the API server at https://k:6443/ answered 401 Unauthorized: Unauthorized");
    }
}
