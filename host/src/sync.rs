//! Keeping the cluster's webhook configurations in step with the plugins
//! serving (`tollgate serve --sync-webhooks`): whenever the set of admission
//! plugins or their metadata changes, the generated configurations
//! ([`crate::webhooks`]) are server-side applied under the field manager
//! `tollgate`; a configuration with no entry left is deleted.
//!
//! Ordering, so the API server never calls a path that does not answer:
//! a plugin is registered only once it serves (the caller installs the new
//! registry first, then asks for it here), and a removed plugin is
//! unregistered before it stops serving (the caller asks for the registry
//! without it, waits for that to be applied, then swaps).
//!
//! One task applies the latest desired state; failures are logged, counted
//! and retried with capped exponential backoff, and never stop the host. A
//! newer desired state replaces the one being retried.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use tokio::sync::watch;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::metrics::SyncLabels;
use crate::registry::Registry;
use crate::webhooks::{self, GenerateError, MANAGER, WebhookConfigs, WebhookOptions};

/// First retry delay; doubled after each failure up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest delay between retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

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
}

impl WebhookSync {
    /// Builds the Kubernetes client and starts the task that applies
    /// configurations. Nothing is applied until [`WebhookSync::want`].
    pub async fn start(
        cluster: ClusterConfig,
        options: WebhookOptions,
        counter: Family<SyncLabels, Counter>,
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
        tracing::info!(cluster = %config.cluster_url, config = %options.config_name, "syncing webhook configurations");
        let client = kube::Client::try_from(config).map_err(|e| SyncError::Config(e.to_string()))?;
        let (desired, desired_rx) = watch::channel(Desired { generation: 0, configs: WebhookConfigs::default() });
        let (applied_tx, applied) = watch::channel(0);
        let applier = Applier { client, config_name: options.config_name.clone(), counter, applied: applied_tx };
        tokio::spawn(applier.run(desired_rx, shutdown));
        Ok(Self { options, desired, applied })
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
}

/// The task that talks to the API server.
struct Applier {
    client: kube::Client,
    config_name: String,
    counter: Family<SyncLabels, Counter>,
    applied: watch::Sender<u64>,
}

impl Applier {
    async fn run(self, mut desired: watch::Receiver<Desired>, mut shutdown: watch::Receiver<bool>) {
        'wait: loop {
            tokio::select! {
                changed = desired.changed() => if changed.is_err() { return },
                _ = shutdown.changed() => return,
            }
            let mut backoff = FIRST_BACKOFF;
            loop {
                let target = desired.borrow_and_update().clone();
                match self.apply(&target.configs).await {
                    Ok(()) => {
                        self.count("applied");
                        tracing::info!(generation = target.generation, webhooks = ?target.configs.webhook_names(), "webhook configurations applied");
                        let _ = self.applied.send(target.generation);
                        continue 'wait;
                    }
                    Err(error) => {
                        self.count("failed");
                        tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "cannot apply webhook configurations; retrying");
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    // A newer state is applied at once, instead of retrying the old one.
                    changed = desired.changed() => if changed.is_err() { return },
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    async fn apply(&self, configs: &WebhookConfigs) -> Result<(), kube::Error> {
        apply_or_delete(
            Api::<ValidatingWebhookConfiguration>::all(self.client.clone()),
            &self.config_name,
            configs.validating.as_ref(),
        )
        .await?;
        apply_or_delete(
            Api::<MutatingWebhookConfiguration>::all(self.client.clone()),
            &self.config_name,
            configs.mutating.as_ref(),
        )
        .await
    }

    fn count(&self, result: &'static str) {
        self.counter.get_or_create(&SyncLabels { result }).inc();
    }
}

/// Server-side applies `object`, or deletes the object of that name when
/// there is none (already gone is fine).
async fn apply_or_delete<K>(api: Api<K>, name: &str, object: Option<&K>) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match object {
        Some(object) => {
            // force: Tollgate owns these objects; take fields another manager set.
            api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(object)).await?;
        }
        None => match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error),
        },
    }
    Ok(())
}
