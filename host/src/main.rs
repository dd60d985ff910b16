//! The `tollgate` command: serve plugins, inspect plugin files, evaluate a
//! plugin offline. Errors become `anyhow` here, at the edge, and nowhere else.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use tollgate::admission::listener::{DEFAULT_MAX_REVIEW_BYTES, DEFAULT_REVIEW_MEMORY_BYTES, ReviewLimits};
use tollgate::cli::eval;
use tollgate::cluster::docs;
use tollgate::cluster::docs::DocsFormat;
use tollgate::cluster::sync::ClusterConfig;
use tollgate::cluster::webhooks::{self, CaSource, Target, WebhookOptions};
use tollgate::gateway::proxy::UpstreamOptions;
use tollgate::plugins::loader::{DEFAULT_MAX_PLUGIN_BYTES, DEFAULT_MAX_SETTINGS_BYTES, FileLimits, Loader, Settings};
use tollgate::plugins::registry::LoadReport;
use tollgate::plugins::{bundled, summary};
use tollgate::runtime::engine::{EngineOptions, Runtime};
use tollgate::serve::limits::{Limits, peer_share, raise_open_files};
use tollgate::serve::{GatewayOptions, ServeOptions, SyncOptions};
use tollgate::tls::{CertSource, TlsOptions};

// glibc's malloc consolidation showed in the gateway's profile; mimalloc
// (also the native baseline's allocator) took it out (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tracing_subscriber::EnvFilter;

/// A WebAssembly policy host for Kubernetes admission and API-gateway traffic.
#[derive(Parser)]
#[command(name = "tollgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the plugins and serve them.
    Serve(Box<ServeArgs>),
    /// Show the metadata of a plugin file or of every plugin in a directory.
    Inspect(InspectArgs),
    /// Run one plugin on one request offline and print its answer.
    Eval(EvalArgs),
    /// Print the webhook configurations (YAML) of the admission plugins.
    Webhooks(WebhooksArgs),
    /// Print the documentation of every plugin.
    Docs(DocsArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Plugin directory (`*.wasm` plus optional `<stem>.settings.json|yaml`).
    /// Without it, the bundled reference plugins are served.
    #[arg(long, env = "TOLLGATE_PLUGINS")]
    plugins: Option<PathBuf>,
    /// Address of the admission webhook listener (HTTPS).
    #[arg(long, default_value = "127.0.0.1:8443")]
    admission_addr: SocketAddr,
    /// Address of the metrics and probes listener (HTTP).
    #[arg(long, default_value = "127.0.0.1:9090")]
    metrics_addr: SocketAddr,
    /// Serving certificate chain (PEM), re-read when it changes. Without
    /// --tls-cert/--tls-key a self-signed certificate is generated.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key of the serving certificate (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Names the generated certificate is valid for.
    #[arg(long = "tls-san", default_values = ["localhost", "127.0.0.1", "::1"])]
    tls_sans: Vec<String>,
    /// Where Tollgate keeps the CA it makes for itself (without
    /// --tls-cert/--tls-key) and the serving certificate it issued, so they
    /// outlive restarts (default: $XDG_STATE_HOME/tollgate, else
    /// ~/.local/state/tollgate). Its CA bundle is `ca.crt` there.
    #[arg(long, env = "TOLLGATE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Also write a copy of the CA bundle of the generated certificate here.
    #[arg(long)]
    ca_out: Option<PathBuf>,
    /// Require client certificates signed by this CA bundle (PEM): only the
    /// API server may call.
    #[arg(long)]
    client_ca: Option<PathBuf>,
    /// Do not watch the plugin directory (plugins change only on restart).
    #[arg(long)]
    no_watch: bool,
    /// Largest plugin file, in MiB: a larger one is refused from its size,
    /// without being read.
    #[arg(long, default_value_t = (DEFAULT_MAX_PLUGIN_BYTES >> 20) as u32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    max_plugin_mib: u32,
    /// Largest settings file, in KiB: a larger one is refused from its
    /// size, without being read.
    #[arg(long, default_value_t = (DEFAULT_MAX_SETTINGS_BYTES >> 10) as u32, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    max_settings_kib: u32,
    /// Show plugins' own messages (why a plugin refused its settings, what
    /// it printed when configure trapped) in /plugins, which has no
    /// authentication. They are always logged, settings values redacted.
    #[arg(long, num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    plugins_detail: bool,
    /// Where compiled plugins are kept between runs (default:
    /// $XDG_CACHE_HOME/tollgate, or ~/.cache/tollgate).
    #[arg(long, env = "TOLLGATE_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile every plugin at every start.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,
    /// Address of the HTTP gateway listener.
    #[arg(long, default_value = "127.0.0.1:8080")]
    gateway_addr: SocketAddr,
    /// Do not run the gateway.
    #[arg(long)]
    no_gateway: bool,
    /// Event-loop threads of the gateway, each with its own socket on the
    /// address (SO_REUSEPORT); default: one per CPU.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    gateway_threads: Option<u16>,
    /// Serve the gateway over HTTPS, with the admission listener's certificate.
    #[arg(long)]
    gateway_tls: bool,
    /// A proxy in front of the gateway (CIDR or address) whose
    /// X-Forwarded-For/-Proto/-Host are kept and extended; from any other
    /// peer they are replaced.
    #[arg(long = "trusted-proxy")]
    trusted_proxies: Vec<String>,
    /// Extra CA bundle (PEM) trusted for https:// upstreams, besides the
    /// system's roots.
    #[arg(long)]
    upstream_ca: Option<PathBuf>,
    /// Time to connect to an upstream, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    upstream_connect_timeout_ms: u64,
    /// Time for an upstream's response head to arrive, in milliseconds.
    #[arg(long, default_value_t = 30000)]
    upstream_timeout_ms: u64,
    /// Cap on one AdmissionReview body, in MiB (413 past it). The default
    /// fits an UPDATE of the largest object the API server stores (1.5 MiB,
    /// etcd's limit) twice, each byte escaped to 6 as the API server may:
    /// 2 × 6 × 1.5 + 1 = 19.
    #[arg(long, default_value_t = (DEFAULT_MAX_REVIEW_BYTES >> 20) as u32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    max_review_mib: u32,
    /// Memory for AdmissionReview bodies held at once, in MiB: a review
    /// that finds no room before its deadline gets 503.
    #[arg(long, default_value_t = (DEFAULT_REVIEW_MEMORY_BYTES >> 20) as u32, value_parser = clap::value_parser!(u32).range(1..=65536))]
    max_review_memory_mib: u32,
    /// Apply the generated webhook configurations to the cluster whenever
    /// the admission plugins change (server-side apply, field manager `tollgate`).
    #[arg(long)]
    sync_webhooks: bool,
    /// Kubeconfig for --sync-webhooks (default: in-cluster, then $KUBECONFIG
    /// or ~/.kube/config).
    #[arg(long, requires = "sync_webhooks")]
    kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    webhooks: WebhookArgs,
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    limits: LimitArgs,
}

/// What each listener takes on at once. Connection caps default to shares
/// of the open-files limit (raised to its hard limit at start).
#[derive(Args)]
struct LimitArgs {
    /// Of --max-instances, the plugin calls admission may run at once
    /// (default: a quarter); the gateway gets the rest. Neither budget can
    /// starve the other.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    admission_calls: Option<u32>,
    /// How long a gateway plugin call waits for a free call before the
    /// request is answered 503 with Retry-After, in milliseconds.
    #[arg(long, default_value_t = tollgate::serve::limits::GATEWAY_WAIT.as_millis() as u64, value_parser = clap::value_parser!(u64).range(0..=MAX_TIMEOUT_SECS * 1000))]
    gateway_wait_ms: u64,
    /// Connections the admission listener keeps open at once (default: an
    /// eighth of the open-files limit, 16 to 1024).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_admission_connections: Option<u32>,
    /// Connections the gateway keeps open at once (default: about half of
    /// the open-files limit left after admission's share).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_gateway_connections: Option<u32>,
    /// Time from connecting to the end of the TLS handshake, and from there
    /// to the first request's headers, in seconds.
    #[arg(long, default_value_t = tollgate::listener::HEADER_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=MAX_TIMEOUT_SECS))]
    header_timeout_secs: u64,
    /// Seconds an admission connection stays open with no request (longer
    /// than the API server's own 90 s, so it closes first).
    #[arg(long, default_value_t = tollgate::serve::limits::ADMISSION_IDLE.as_secs(), value_parser = clap::value_parser!(u64).range(1..=MAX_TIMEOUT_SECS))]
    admission_idle_secs: u64,
    /// Seconds a gateway connection stays open with no request.
    #[arg(long, default_value_t = tollgate::serve::limits::GATEWAY_IDLE.as_secs(), value_parser = clap::value_parser!(u64).range(1..=MAX_TIMEOUT_SECS))]
    gateway_idle_secs: u64,
}

/// Longest connection timeout (and gateway wait) accepted: a day.
const MAX_TIMEOUT_SECS: u64 = 86_400;

impl LimitArgs {
    /// The limits, from the open-files limit (raised first) and `max_calls`.
    fn limits(&self, max_calls: u32) -> Result<Limits> {
        let mut limits = Limits::new(raise_open_files(), max_calls as usize);
        if let Some(calls) = self.admission_calls {
            if calls >= max_calls {
                bail!("--admission-calls {calls} leaves no call of --max-instances {max_calls} for the gateway");
            }
            limits.admission_calls = calls as usize;
            limits.gateway_calls = (max_calls.saturating_sub(calls) as usize).max(1);
        }
        limits.gateway_wait = Duration::from_millis(self.gateway_wait_ms);
        let header_timeout = Duration::from_secs(self.header_timeout_secs);
        for (listener, max, idle) in [
            (&mut limits.admission, self.max_admission_connections, self.admission_idle_secs),
            (&mut limits.gateway, self.max_gateway_connections, self.gateway_idle_secs),
        ] {
            if let Some(max) = max {
                listener.max_connections = max as usize;
                listener.max_per_peer = listener.max_per_peer.map(|_| peer_share(max as usize));
            }
            listener.header_timeout = header_timeout;
            listener.idle_timeout = Duration::from_secs(idle);
        }
        limits.metrics.header_timeout = header_timeout;
        Ok(limits)
    }
}

#[derive(Args)]
struct WebhooksArgs {
    /// Plugin directory. Without it, the bundled reference plugins.
    #[arg(long, env = "TOLLGATE_PLUGINS")]
    plugins: Option<PathBuf>,
    #[command(flatten)]
    webhooks: WebhookArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args)]
struct DocsArgs {
    /// Plugin directory. Without it, the bundled reference plugins.
    #[arg(long, env = "TOLLGATE_PLUGINS")]
    plugins: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = DocsFormat::Markdown)]
    format: DocsFormat,
    #[command(flatten)]
    engine: EngineArgs,
}

/// How the generated webhook configurations reach Tollgate.
#[derive(Args)]
struct WebhookArgs {
    /// Name of the generated configuration objects.
    #[arg(long, default_value = webhooks::DEFAULT_CONFIG_NAME)]
    config_name: String,
    /// Webhook names are `<plugin>.<domain>`.
    #[arg(long, default_value = webhooks::DEFAULT_DOMAIN)]
    domain: String,
    /// Service the API server calls.
    #[arg(long, default_value = "tollgate")]
    service_name: String,
    /// Namespace of that Service, where Tollgate runs.
    #[arg(long, default_value = webhooks::DEFAULT_NAMESPACE)]
    service_namespace: String,
    /// Port of that Service.
    #[arg(long, default_value_t = 443)]
    service_port: u16,
    /// Call Tollgate at this URL (`https://host:port`) instead of a Service.
    #[arg(long)]
    url: Option<String>,
    /// PEM CA bundle that signed Tollgate's serving certificate (caBundle).
    #[arg(long, conflicts_with = "inject_ca")]
    ca_bundle: Option<PathBuf>,
    /// Let an injector fill caBundle: `cert-manager:<namespace>/<certificate>`
    /// or `service-ca` (OpenShift).
    #[arg(long)]
    inject_ca: Option<String>,
    /// Namespaces no webhook applies to, so a broken Tollgate cannot stop
    /// anyone repairing it. Default: the Service's namespace, where Tollgate
    /// runs; with --url, none (Tollgate runs in no namespace the webhooks
    /// know, and an excluded name anyone may create is a way around every
    /// policy).
    #[arg(long = "exclude-namespace")]
    exclude_namespaces: Vec<String>,
}

impl WebhookArgs {
    fn options(&self) -> Result<WebhookOptions> {
        let ca = match (&self.ca_bundle, self.inject_ca.as_deref()) {
            (Some(file), _) => CaSource::Bundle(webhooks::read_ca_bundle(file)?),
            (None, Some("service-ca")) => CaSource::ServiceCa,
            (None, Some(spec)) => match spec.strip_prefix("cert-manager:") {
                Some(from) => CaSource::CertManager(from.to_string()),
                None => bail!("--inject-ca {spec:?}: expected cert-manager:<namespace>/<certificate> or service-ca"),
            },
            (None, None) => CaSource::None,
        };
        let target = match &self.url {
            Some(url) => Target::Url(url.clone()),
            None => Target::Service {
                name: self.service_name.clone(),
                namespace: self.service_namespace.clone(),
                port: self.service_port,
            },
        };
        let exclude_namespaces = match (&target, self.exclude_namespaces.is_empty()) {
            (_, false) => self.exclude_namespaces.clone(),
            (Target::Service { namespace, .. }, true) => vec![namespace.clone()],
            (Target::Url(_), true) => Vec::new(),
        };
        let options = WebhookOptions {
            config_name: self.config_name.clone(),
            domain: self.domain.clone(),
            target,
            ca,
            exclude_namespaces,
        };
        options.check()?;
        Ok(options)
    }
}

#[derive(Args)]
struct InspectArgs {
    /// A `.wasm` file or a directory of them.
    path: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args)]
struct EvalArgs {
    /// The plugin file.
    plugin: PathBuf,
    /// The request: an AdmissionReview, a route request head, or an
    /// allowlist check (`{"request": ..., "identity": ...}`), as JSON.
    request: PathBuf,
    /// Settings file to use instead of the one beside the plugin.
    #[arg(long)]
    settings: Option<PathBuf>,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Limits every plugin runs under.
#[derive(Args)]
struct EngineArgs {
    /// Memory cap of one plugin instance, in MiB.
    #[arg(long, default_value_t = 64)]
    max_memory_mib: usize,
    /// Deadline of loading calls and of gateway plugin calls, in
    /// milliseconds (admission calls get their webhook timeout less a margin).
    #[arg(long, default_value_t = 1000)]
    deadline_ms: u64,
    /// Plugin calls running at once, admission's and the gateway's
    /// together (see --admission-calls); more wait. As many instances
    /// again may be kept idle for reuse.
    #[arg(long, default_value_t = 128)]
    max_instances: u32,
    /// Calls one plugin instance serves before it is replaced by a fresh
    /// one; 1 gives every call a fresh instance (slower, nothing of an
    /// earlier call stays in the plugin's memory).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    calls_per_instance: u32,
    /// Allocate instances on demand instead of from a pre-reserved pool
    /// (slower; for environments that limit address space).
    #[arg(long)]
    no_pooling: bool,
}

impl EngineArgs {
    fn options(&self) -> EngineOptions {
        let deadline = Duration::from_millis(self.deadline_ms);
        EngineOptions {
            max_memory_bytes: self.max_memory_mib << 20,
            max_instances: self.max_instances,
            calls_per_instance: self.calls_per_instance,
            load_deadline: deadline,
            call_deadline: deadline,
            pooling: !self.no_pooling,
        }
    }

    fn runtime(&self) -> Result<Arc<Runtime>> {
        Ok(Arc::new(Runtime::new(self.options())?))
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        // Colour only for people: piped logs go to files and collectors.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Inspect(args) => inspect(args),
        Command::Eval(args) => eval_command(args),
        Command::Webhooks(args) => webhooks_command(args),
        Command::Docs(args) => docs_command(args),
    }
}

fn serve(mut args: ServeArgs) -> Result<ExitCode> {
    let cert = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => CertSource::Files { cert, key },
        _ => CertSource::Generated {
            names: args.tls_sans,
            state_dir: match args.state_dir.or_else(default_state_dir) {
                Some(dir) => dir,
                None => bail!("no $XDG_STATE_HOME or $HOME to keep the generated CA in: give --state-dir"),
            },
            ca_out: args.ca_out,
        },
    };
    // --ca-bundle naming the generated CA's own file (ca.crt, or the
    // --ca-out copy) means that CA, which sync registers anyway; it may not
    // exist yet on a first start, so it is not read.
    if let CertSource::Generated { state_dir, ca_out, .. } = &cert
        && let Some(bundle) = &args.webhooks.ca_bundle
        && (Some(bundle) == ca_out.as_ref() || *bundle == tollgate::tls::ca::ca_file(state_dir))
    {
        args.webhooks.ca_bundle = None;
    }
    let limits = args.limits.limits(args.engine.max_instances)?;
    let reviews = ReviewLimits::new((args.max_review_mib as usize) << 20, (args.max_review_memory_mib as usize) << 20)
        .map_err(|reason| anyhow::anyhow!("--max-review-memory-mib: {reason}"))?;
    let options = ServeOptions {
        reviews,
        plugins: args.plugins,
        engine: EngineOptions { max_instances: limits.total_calls() as u32, ..args.engine.options() },
        limits,
        admission_addr: args.admission_addr,
        metrics_addr: Some(args.metrics_addr),
        tls: TlsOptions { cert, client_ca: args.client_ca },
        watch: !args.no_watch,
        files: FileLimits {
            max_plugin_bytes: u64::from(args.max_plugin_mib) << 20,
            max_settings_bytes: u64::from(args.max_settings_kib) << 10,
        },
        plugins_detail: args.plugins_detail,
        cache_dir: if args.no_cache { None } else { args.cache_dir.or_else(default_cache_dir) },
        sync: match args.sync_webhooks {
            true => Some(SyncOptions {
                cluster: args.kubeconfig.map_or(ClusterConfig::Infer, ClusterConfig::Kubeconfig),
                webhooks: args.webhooks.options()?,
            }),
            false => None,
        },
        gateway: (!args.no_gateway).then(|| GatewayOptions {
            addr: args.gateway_addr,
            tls: args.gateway_tls,
            trusted_proxies: args.trusted_proxies,
            threads: args.gateway_threads.map_or_else(
                || std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
                usize::from,
            ),
            upstream: UpstreamOptions {
                extra_ca: args.upstream_ca,
                connect_timeout: Duration::from_millis(args.upstream_connect_timeout_ms),
                response_timeout: Duration::from_millis(args.upstream_timeout_ms),
                ..UpstreamOptions::default()
            },
        }),
    };
    let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
    runtime.block_on(tollgate::serve::run(options, stop_signal()))?;
    Ok(ExitCode::SUCCESS)
}

/// $XDG_STATE_HOME/tollgate, else ~/.local/state/tollgate, else none: the
/// XDG place for data that outlives a run but is not worth backing up.
fn default_state_dir() -> Option<PathBuf> {
    xdg_dir("XDG_STATE_HOME", ".local/state")
}

/// $XDG_CACHE_HOME/tollgate, else ~/.cache/tollgate, else none.
fn default_cache_dir() -> Option<PathBuf> {
    xdg_dir("XDG_CACHE_HOME", ".cache")
}

/// `tollgate` under the XDG base directory `$var`, else under `~/<fallback>`.
fn xdg_dir(var: &str, fallback: &str) -> Option<PathBuf> {
    let base = std::env::var_os(var)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(fallback)))?;
    Some(base.join("tollgate"))
}

/// Ctrl-C, or SIGTERM as Kubernetes sends when it stops a pod.
async fn stop_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn inspect(args: InspectArgs) -> Result<ExitCode> {
    let loader = Loader::new(args.engine.runtime()?);
    let report = if args.path.is_dir() {
        loader.load_dir(&args.path)?
    } else {
        let mut report = LoadReport::default();
        match loader.load_file(&args.path).and_then(|p| report.registry.insert(p)) {
            Ok(_) => {}
            Err(refused) => report.refused.push(refused),
        }
        report
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary::ReportSummary::from(&report))?);
    } else {
        print!("{}", summary::render_text(&report));
    }
    // Refusals make the command fail, so scripts and CI notice them.
    Ok(if report.refused.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

fn eval_command(args: EvalArgs) -> Result<ExitCode> {
    let loader = Loader::new(args.engine.runtime()?);
    let plugin = match &args.settings {
        Some(file) => {
            let bytes = std::fs::read(&args.plugin).with_context(|| format!("read {}", args.plugin.display()))?;
            let settings = Settings::from_file(file).map_err(|reason| anyhow::anyhow!("{reason}"))?;
            loader.load_bytes(&args.plugin, &bytes, settings)?
        }
        None => loader.load_file(&args.plugin)?,
    };
    let request = std::fs::read_to_string(&args.request)
        .with_context(|| format!("read request file {}", args.request.display()))?;
    let evaluation = match eval::eval(&plugin, &request) {
        Ok(evaluation) => evaluation,
        Err(error) => bail!("{error}"),
    };
    println!("{}", serde_json::to_string_pretty(&evaluation.answer)?);
    // The answer is the server's, but a plugin that gave none should fail
    // the script or CI job that asked.
    Ok(match evaluation.failure {
        Some(failure) => {
            eprintln!("the plugin gave no verdict ({failure}); the answer above is its failure policy's");
            ExitCode::from(3)
        }
        None => ExitCode::SUCCESS,
    })
}

/// Loads a plugin directory (or the bundled plugins) for a generator, or
/// fails naming every refused file: generated output must cover every plugin.
fn load_all(plugins: Option<&std::path::Path>, engine: &EngineArgs) -> Result<tollgate::plugins::registry::Registry> {
    let loader = Loader::new(engine.runtime()?);
    let report = match plugins {
        Some(dir) => loader.load_dir(dir)?,
        None => bundled::load(&loader),
    };
    if !report.refused.is_empty() {
        let reasons: Vec<String> =
            report.refused.iter().map(|r| format!("  {}: {}", r.file.display(), r.reason)).collect();
        bail!("{} plugin file(s) refused, nothing generated:\n{}", reasons.len(), reasons.join("\n"));
    }
    Ok(report.registry)
}

fn webhooks_command(args: WebhooksArgs) -> Result<ExitCode> {
    let options = args.webhooks.options()?;
    let registry = load_all(args.plugins.as_deref(), &args.engine)?;
    let configs = webhooks::generate(&registry, &options)?;
    if configs.webhook_names().is_empty() {
        bail!("no admission plugin: nothing to generate");
    }
    print!("{}", configs.to_yaml()?);
    Ok(ExitCode::SUCCESS)
}

fn docs_command(args: DocsArgs) -> Result<ExitCode> {
    let registry = load_all(args.plugins.as_deref(), &args.engine)?;
    print!("{}", docs::render(&registry, args.format)?);
    Ok(ExitCode::SUCCESS)
}
