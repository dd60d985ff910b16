//! Prometheus metrics: one [`Metrics`] per host, rendered in the text
//! exposition format by the metrics endpoint.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A plugin and what it decided: `allowed`, `denied`, or `error` (the
/// failure policy answered instead).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// Plugin name.
    pub plugin: String,
    /// allowed, denied or error.
    pub decision: &'static str,
}

/// A plugin.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    /// Plugin name.
    pub plugin: String,
}

/// A plugin and why a call failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// Plugin name.
    pub plugin: String,
    /// trap, deadline, memory, instantiate, settings, bad_answer, overloaded, internal.
    pub cause: &'static str,
}

/// A request answered before any plugin ran.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    /// not_found, method, media_type, too_large, busy, slow_body, bad_body, bad_review.
    pub reason: &'static str,
}

/// A listener: `admission`, `gateway` or `metrics`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// Listener name.
    pub listener: &'static str,
}

/// A listener and why it closed a connection itself.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClosedLabels {
    /// Listener name.
    pub listener: &'static str,
    /// limit, peer_limit, handshake_error, handshake_timeout, header_timeout,
    /// idle, stalled or drain_timeout.
    pub reason: &'static str,
}

/// The outcome of loading a plugin file.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoadLabels {
    /// loaded or refused.
    pub result: &'static str,
}

/// A change to the serving set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabels {
    /// added, swapped or removed.
    pub change: &'static str,
}

/// The outcome of applying webhook configurations to the cluster.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    /// applied or failed.
    pub result: &'static str,
}

/// A gateway route and the status the client got.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatusLabels {
    /// Route plugin name, or `none` when no route matched.
    pub route: String,
    /// HTTP status code.
    pub status: u16,
}

/// A gateway route.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Route plugin name.
    pub route: String,
}

/// A gateway plugin's decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayDecisionLabels {
    /// Plugin name.
    pub plugin: String,
    /// forward, respond, allowed, denied or error.
    pub decision: &'static str,
}

/// What an upstream answered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// Route plugin name.
    pub route: String,
    /// The upstream's status code, or `connect_error`, `timeout`, `error`.
    pub status: String,
}

/// A plugin kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// admission, route or allowlist.
    pub kind: &'static str,
}

type HistogramFamily = Family<PluginLabels, Histogram, fn() -> Histogram>;
type RouteHistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// Every metric the host exports.
pub struct Metrics {
    registry: Registry,
    /// Admission requests answered, by plugin and decision.
    pub admission_requests: Family<DecisionLabels, Counter>,
    /// Time to answer an admission request, by plugin.
    pub admission_seconds: HistogramFamily,
    /// Plugin calls that failed, by plugin and cause.
    pub plugin_failures: Family<FailureLabels, Counter>,
    /// Requests answered with a 4xx before a plugin ran.
    pub rejected_requests: Family<RejectLabels, Counter>,
    /// Requests that found no free plugin call of their listener's budget
    /// in time, by listener.
    pub overloaded: Family<ListenerLabels, Counter>,
    /// Connections open now, by listener.
    pub connections: Family<ListenerLabels, Gauge>,
    /// Connections a listener closed itself, by listener and reason.
    pub connections_closed: Family<ClosedLabels, Counter>,
    /// Plugin files loaded or refused.
    pub plugin_loads: Family<LoadLabels, Counter>,
    /// Plugins serving, by kind.
    pub plugins: Family<KindLabels, Gauge>,
    /// Plugins added (the first load adds each it serves), swapped or removed.
    pub plugin_changes: Family<ChangeLabels, Counter>,
    /// Rescans of the plugin directory (after file events, and periodically).
    pub plugin_rescans: Counter,
    /// Attempts to apply webhook configurations to the cluster.
    pub webhook_syncs: Family<SyncLabels, Counter>,
    /// 1 while the latest webhook sync succeeded, 0 once one failed.
    pub webhook_sync_healthy: Gauge,
    /// When the latest webhook sync succeeded (Unix seconds).
    pub webhook_sync_last_success: Gauge,
    /// Gateway requests answered, by route and status.
    pub gateway_requests: Family<RouteStatusLabels, Counter>,
    /// Time to answer a gateway request (to the response head), by route.
    pub gateway_seconds: RouteHistogramFamily,
    /// Decisions of route and allowlist plugins.
    pub gateway_decisions: Family<GatewayDecisionLabels, Counter>,
    /// Upstream answers, by route and status.
    pub upstream_responses: Family<UpstreamLabels, Counter>,
    /// 1 while the plugin directory cannot be read (removed, unreadable):
    /// the plugins loaded from it keep serving.
    pub plugin_dir_missing: Gauge,
    /// 1 while the plugin directory is empty and the plugins loaded from it
    /// keep serving.
    pub plugin_dir_empty: Gauge,
    /// Times the plugin directory was found removed or replaced and watched
    /// again.
    pub plugin_dir_rewatches: Counter,
}

fn latency_histogram() -> Histogram {
    // 25 µs to about 0.8 s: a Wasm call is tens of microseconds, and the
    // slowest useful answer is bounded by the webhook timeout.
    Histogram::new(exponential_buckets(0.000_025, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tollgate");
        let admission_requests = Family::<DecisionLabels, Counter>::default();
        let admission_seconds: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let plugin_failures = Family::<FailureLabels, Counter>::default();
        let rejected_requests = Family::<RejectLabels, Counter>::default();
        let overloaded = Family::<ListenerLabels, Counter>::default();
        let connections = Family::<ListenerLabels, Gauge>::default();
        let connections_closed = Family::<ClosedLabels, Counter>::default();
        let plugin_loads = Family::<LoadLabels, Counter>::default();
        let plugins = Family::<KindLabels, Gauge>::default();
        let plugin_changes = Family::<ChangeLabels, Counter>::default();
        let plugin_rescans = Counter::default();
        let webhook_syncs = Family::<SyncLabels, Counter>::default();
        let webhook_sync_healthy = Gauge::default();
        let webhook_sync_last_success = Gauge::default();
        let gateway_requests = Family::<RouteStatusLabels, Counter>::default();
        let gateway_seconds: RouteHistogramFamily = Family::new_with_constructor(latency_histogram);
        let gateway_decisions = Family::<GatewayDecisionLabels, Counter>::default();
        let upstream_responses = Family::<UpstreamLabels, Counter>::default();
        let plugin_dir_missing = Gauge::default();
        let plugin_dir_empty = Gauge::default();
        let plugin_dir_rewatches = Counter::default();
        registry.register("admission_requests", "Admission requests answered", admission_requests.clone());
        registry.register("admission_seconds", "Time to answer an admission request", admission_seconds.clone());
        registry.register("plugin_failures", "Plugin calls that trapped, timed out or failed", plugin_failures.clone());
        registry.register("rejected_requests", "Requests refused before a plugin ran", rejected_requests.clone());
        registry.register("overloaded", "Requests that found no free plugin call in time", overloaded.clone());
        registry.register("connections", "Connections open", connections.clone());
        registry.register(
            "connections_closed",
            "Connections a listener closed itself (limit, timeouts)",
            connections_closed.clone(),
        );
        registry.register("plugin_loads", "Plugin files loaded or refused", plugin_loads.clone());
        registry.register("plugins", "Plugins serving", plugins.clone());
        registry.register(
            "plugin_changes",
            "Plugins added (the first load adds each plugin it serves), swapped or removed",
            plugin_changes.clone(),
        );
        registry.register("plugin_rescans", "Rescans of the plugin directory", plugin_rescans.clone());
        registry.register("webhook_syncs", "Attempts to apply webhook configurations", webhook_syncs.clone());
        registry.register(
            "webhook_sync_healthy",
            "1 while the latest webhook sync succeeded, 0 after a failure",
            webhook_sync_healthy.clone(),
        );
        registry.register(
            "webhook_sync_last_success_timestamp_seconds",
            "When the latest webhook sync succeeded",
            webhook_sync_last_success.clone(),
        );
        registry.register("gateway_requests", "Gateway requests answered", gateway_requests.clone());
        registry.register("gateway_seconds", "Time to answer a gateway request", gateway_seconds.clone());
        registry.register("gateway_decisions", "Decisions of gateway plugins", gateway_decisions.clone());
        registry.register("upstream_responses", "Upstream answers", upstream_responses.clone());
        registry.register(
            "plugin_dir_missing",
            "1 while the plugin directory cannot be read; the plugins loaded from it keep serving",
            plugin_dir_missing.clone(),
        );
        registry.register(
            "plugin_dir_empty",
            "1 while the plugin directory is empty; the plugins loaded from it keep serving",
            plugin_dir_empty.clone(),
        );
        registry.register(
            "plugin_dir_rewatches",
            "Times the plugin directory was removed or replaced and watched again",
            plugin_dir_rewatches.clone(),
        );
        Self {
            registry,
            admission_requests,
            admission_seconds,
            plugin_failures,
            rejected_requests,
            overloaded,
            connections,
            connections_closed,
            plugin_loads,
            plugins,
            plugin_changes,
            plugin_rescans,
            webhook_syncs,
            webhook_sync_healthy,
            webhook_sync_last_success,
            gateway_requests,
            gateway_seconds,
            gateway_decisions,
            upstream_responses,
            plugin_dir_missing,
            plugin_dir_empty,
            plugin_dir_rewatches,
        }
    }
}

/// The metrics webhook sync updates (clones share the values).
#[derive(Clone, Debug)]
pub struct SyncMetrics {
    /// Attempts, by result.
    pub syncs: Family<SyncLabels, Counter>,
    /// 1 while the latest attempt succeeded.
    pub healthy: Gauge,
    /// Unix seconds of the latest success.
    pub last_success: Gauge,
}

impl Metrics {
    /// What webhook sync updates.
    pub fn sync(&self) -> SyncMetrics {
        SyncMetrics {
            syncs: self.webhook_syncs.clone(),
            healthy: self.webhook_sync_healthy.clone(),
            last_success: self.webhook_sync_last_success.clone(),
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
