//! The `tollgate` command: serve plugins, inspect plugin files, evaluate a
//! plugin offline. Errors become `anyhow` here, at the edge, and nowhere else.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use tollgate::engine::{EngineOptions, Runtime};
use tollgate::loader::{Loader, Settings};
use tollgate::registry::LoadReport;
use tollgate::{bundled, eval, summary};
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
    Serve(ServeArgs),
    /// Show the metadata of a plugin file or of every plugin in a directory.
    Inspect(InspectArgs),
    /// Run one plugin on one request offline and print its answer.
    Eval(EvalArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Plugin directory (`*.wasm` plus optional `<stem>.settings.json|yaml`).
    /// Without it, the bundled reference plugins are served.
    #[arg(long, env = "TOLLGATE_PLUGINS")]
    plugins: Option<PathBuf>,
    #[command(flatten)]
    engine: EngineArgs,
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
    /// Deadline of one plugin call, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    deadline_ms: u64,
    /// Plugin instances alive at once.
    #[arg(long, default_value_t = 128)]
    max_instances: u32,
    /// Allocate instances on demand instead of from a pre-reserved pool
    /// (slower; for environments that limit address space).
    #[arg(long)]
    no_pooling: bool,
}

impl EngineArgs {
    fn runtime(&self) -> Result<Arc<Runtime>> {
        let deadline = Duration::from_millis(self.deadline_ms);
        let options = EngineOptions {
            max_memory_bytes: self.max_memory_mib << 20,
            max_instances: self.max_instances,
            load_deadline: deadline,
            call_deadline: deadline,
            pooling: !self.no_pooling,
        };
        Ok(Arc::new(Runtime::new(options)?))
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
        Command::Serve(args) => serve(args),
        Command::Inspect(args) => inspect(args),
        Command::Eval(args) => eval_command(args),
    }
}

fn load(loader: &Loader, plugins: Option<&PathBuf>) -> Result<LoadReport> {
    match plugins {
        Some(dir) => Ok(loader.load_dir(dir)?),
        None => Ok(bundled::load(loader)),
    }
}

fn serve(args: ServeArgs) -> Result<ExitCode> {
    let loader = Loader::new(args.engine.runtime()?);
    let report = load(&loader, args.plugins.as_ref())?;
    for plugin in report.registry.iter() {
        tracing::info!(
            plugin = plugin.name(),
            version = plugin.version(),
            kind = %plugin.kind(),
            path = plugin.metadata().admission_path().unwrap_or_default(),
            "serving"
        );
    }
    tracing::info!(loaded = report.registry.len(), refused = report.refused.len(), "plugins ready; Ctrl-C stops");
    let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
    runtime.block_on(tokio::signal::ctrl_c()).context("wait for Ctrl-C")?;
    tracing::info!("stopping");
    Ok(ExitCode::SUCCESS)
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
    let answer = match eval::eval(&plugin, &request) {
        Ok(answer) => answer,
        Err(error) => bail!("{error}"),
    };
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(ExitCode::SUCCESS)
}
