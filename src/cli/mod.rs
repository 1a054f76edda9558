//! The `steward` command line. Each subcommand lives in its own file; this one parses
//! arguments, sets up logging, and turns every error into a message and an exit code
//! (1: the operation failed, 2: bad input or configuration). It never panics on bad input.

/// `println!` that does not panic when stdout is gone (`steward jobs list | head`): output
/// nobody reads is dropped.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod data;
mod demo;
mod demo_lifecycle;
mod jobs;
mod modules;
mod output;
mod queues;
mod runs;
mod worker;

use crate::config::{Settings, WorkerSettings};
use crate::kinds::{KindCatalog, KindError};
use crate::store::{self, SharedStore, StoreError};
use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// `steward --version`: the binary's version and its schema's.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (schema 25)");

/// steward: durable jobs and workflows for a SaaS module lifecycle.
#[derive(Debug, Parser)]
#[command(name = "steward", version = VERSION, about)]
pub struct Cli {
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply the schema: the only command (with the demo) that changes it; the others refuse
    /// a database whose schema is behind.
    Migrate,
    /// Run workers and maintenance until SIGTERM or SIGINT.
    Worker(WorkerSettings),
    /// The embedded demo: SQLite under ./data, workers, sample jobs.
    Demo(demo::DemoArgs),
    /// Enqueue a job.
    Enqueue(jobs::EnqueueArgs),
    /// Inspect and operate on jobs.
    #[command(subcommand)]
    Jobs(jobs::JobsCommand),
    /// The dead-letter queue.
    #[command(subcommand)]
    Dlq(jobs::DlqCommand),
    /// Queues: what each holds, pause and resume.
    #[command(subcommand)]
    Queues(queues::QueuesCommand),
    /// The worker processes: live ones, their queues, jobs in hand, last heartbeat.
    Workers,
    /// Start a workflow run.
    Run(runs::RunArgs),
    /// Inspect and operate on workflow runs.
    #[command(subcommand)]
    Runs(runs::RunsCommand),
    /// Cron triggers and their next fire times.
    Schedules {
        /// How many upcoming fire times to show per workflow.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=1000))]
        count: u16,
    },
    /// Tenants.
    #[command(subcommand)]
    Tenant(modules::TenantCommand),
    /// The module catalog.
    #[command(subcommand)]
    Catalog(modules::CatalogCommand),
    /// A tenant's modules: request, approve, reject.
    #[command(subcommand)]
    Module(modules::ModuleCommand),
    /// Plans, their modules and subscriptions; plan-module sync.
    #[command(subcommand)]
    Plan(modules::PlanCommand),
    /// The audit log (of a tenant, or of the catalog).
    Audit {
        /// Only this tenant's entries (default: the catalog's).
        #[arg(long)]
        tenant: Option<i64>,
        /// At most this many (1 to 10,000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
    },
    /// Monthly cost per tenant and module, from the usage logs.
    #[command(subcommand)]
    Cost(data::CostCommand),
    /// Purge-and-export now: every tenant module's rows past its retention go to the export
    /// storage, verified, then are deleted (also nightly).
    Purge,
    /// Serve the HTTP API until SIGTERM or SIGINT.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "STEWARD_LISTEN", default_value = "127.0.0.1:8080")]
        listen: String,
    },
    /// Mint an API token (printed on stdout).
    Token {
        /// master_admin, tenant_admin or service.
        #[arg(long, value_enum)]
        role: crate::api::auth::Role,
        /// The tenant of a tenant_admin.
        #[arg(long)]
        tenant: Option<i64>,
        /// Who the token is for (the `sub` claim).
        #[arg(long, default_value = "cli")]
        sub: String,
        /// Validity in hours (at most a year).
        #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(i64).range(1..=8760))]
        ttl_hours: i64,
    },
    /// Measure throughput and latency; prints one JSON object per scenario.
    Bench(crate::bench::BenchArgs),
}

/// Everything a command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Kinds(#[from] KindError),
    #[error(transparent)]
    Workflows(#[from] crate::workflow::WorkflowError),
    #[error(transparent)]
    Catalog(#[from] crate::domain::catalog::CatalogError),
    #[error(transparent)]
    Lifecycle(#[from] crate::lifecycle::LifecycleError),
    #[error(transparent)]
    Engine(#[from] crate::workflow::EngineError),
    #[error("cannot use database {url}: {source}")]
    Connect { url: String, source: StoreError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Client(#[from] crate::ClientError),
    #[error(transparent)]
    Runtime(#[from] crate::queue::RuntimeError),
    #[error(transparent)]
    Queue(#[from] crate::config::BadQueue),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Kinds(_)
            | CliError::Workflows(_)
            | CliError::Catalog(_)
            | CliError::Queue(_)
            | CliError::Usage(_) => 2,
            CliError::Engine(crate::workflow::EngineError::UnknownWorkflow(_))
            | CliError::Engine(crate::workflow::EngineError::InvalidParams { .. }) => 2,
            CliError::Runtime(crate::queue::RuntimeError::Config(_)) => 2,
            CliError::Client(crate::ClientError::UnknownKind(_))
            | CliError::Client(crate::ClientError::InvalidPayload { .. })
            | CliError::Client(crate::ClientError::InvalidOption(_)) => 2,
            CliError::Store(StoreError::InvalidInput(_)) => 2,
            CliError::Store(StoreError::Domain(
                crate::domain::DomainError::InvalidIdentifier { .. },
            )) => 2,
            CliError::Lifecycle(crate::lifecycle::LifecycleError::Domain(
                crate::domain::DomainError::InvalidIdentifier { .. }
                | crate::domain::DomainError::Unknown { .. },
            ))
            | CliError::Lifecycle(crate::lifecycle::LifecycleError::NoModule(_))
            | CliError::Lifecycle(crate::lifecycle::LifecycleError::NoTenant(_)) => 2,
            CliError::Lifecycle(crate::lifecycle::LifecycleError::Engine(
                crate::workflow::EngineError::UnknownWorkflow(_)
                | crate::workflow::EngineError::InvalidParams { .. },
            )) => 2,
            CliError::Connect {
                source: StoreError::InvalidInput(_),
                ..
            } => 2,
            _ => 1,
        }
    }
}

/// The command line as parsed: the global options (database, directories, S3, secrets…) are
/// accepted everywhere but described once, at the end of `steward --help`; each subcommand's
/// help lists its own options and points there.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let mut root = Cli::command();
    let globals: Vec<clap::Id> = root
        .get_arguments()
        .filter(|a| a.is_global_set())
        .map(|a| a.get_id().clone())
        .collect();
    let mut text = String::from("Global options (accepted by every command):\n");
    for arg in root.get_arguments().filter(|a| a.is_global_set()) {
        let long = arg.get_long().unwrap_or_default();
        let value = arg
            .get_value_names()
            .and_then(|names| names.first())
            .filter(|_| arg.get_action().takes_values())
            .map(|name| format!(" <{name}>"))
            .unwrap_or_default();
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        let env = arg
            .get_env()
            .map(|e| format!(" [env: {}]", e.to_string_lossy()))
            .unwrap_or_default();
        let default = arg
            .get_default_values()
            .first()
            .map(|d| format!(" [default: {}]", d.to_string_lossy()))
            .unwrap_or_default();
        text.push_str(&format!(
            "  --{long}{value}\n          {help}{env}{default}\n"
        ));
    }
    for id in globals {
        root = root.mut_arg(id, |a| a.hide(true));
    }
    point_to_globals(root.after_help(text), false)
}

/// Every subcommand's help, at any depth, ends by pointing to the global options.
fn point_to_globals(command: clap::Command, here: bool) -> clap::Command {
    let command = if here {
        command.after_help(
            "Global options (database, directories, S3, secrets, logging): `steward --help`.",
        )
    } else {
        command
    };
    command.mut_subcommands(|sub| point_to_globals(sub, true))
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let parsed = command()
        .try_get_matches()
        .and_then(|matches| <Cli as clap::FromArgMatches>::from_arg_matches(&matches));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging(&cli.settings.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

fn init_logging(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal: never in a file, a pipe or a log collector.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().with_current_span(true).try_init()
    } else {
        builder.try_init()
    };
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let settings = cli.settings;
    match cli.command {
        Command::Migrate => {
            let store = open_store_migrated(&settings).await?;
            output::done(
                settings.output,
                format!(
                    "schema is up to date ({}, version {})",
                    store.capabilities().name,
                    store::SCHEMA_VERSION
                ),
                serde_json::json!({"backend": store.capabilities().name, "schema_version": store::SCHEMA_VERSION}),
            );
            Ok(())
        }
        Command::Worker(args) => worker::run(&settings, &args).await,
        Command::Demo(args) => demo::run(&settings, &args).await,
        Command::Enqueue(args) => jobs::enqueue(&settings, &args).await,
        Command::Jobs(command) => jobs::jobs(&settings, command).await,
        Command::Dlq(command) => jobs::dlq(&settings, command).await,
        Command::Queues(command) => queues::queues(&settings, command).await,
        Command::Workers => queues::workers(&settings).await,
        Command::Run(args) => runs::run(&settings, &args).await,
        Command::Runs(command) => runs::runs(&settings, command).await,
        Command::Schedules { count } => runs::schedules(&settings, usize::from(count)).await,
        Command::Tenant(command) => modules::tenant(&settings, command).await,
        Command::Catalog(command) => modules::catalog(&settings, command).await,
        Command::Module(command) => modules::module(&settings, command).await,
        Command::Plan(command) => modules::plan(&settings, command).await,
        Command::Cost(command) => data::cost(&settings, command).await,
        Command::Purge => data::purge(&settings).await,
        Command::Serve { listen } => serve(&settings, &listen).await,
        Command::Token {
            role,
            tenant,
            sub,
            ttl_hours,
        } => {
            let keys = settings.auth_keys().map_err(CliError::Usage)?;
            let token = keys
                .mint(&sub, role, tenant, chrono::Duration::hours(ttl_hours))
                .map_err(CliError::Usage)?;
            match settings.output {
                crate::config::OutputFormat::Table => out!("{token}"),
                crate::config::OutputFormat::Json => {
                    out!("{}", serde_json::json!({"token": token}))
                }
            }
            Ok(())
        }
        Command::Audit { tenant, limit } => modules::audit(&settings, tenant, limit).await,
        Command::Bench(args) => crate::bench::run(&settings, &args)
            .await
            .map_err(CliError::Failed),
    }
}

/// Connect to a database whose schema is this build's (see [`open_store_migrated`]): only
/// `steward migrate` and the demo change the schema. One that is behind (or was never
/// migrated) is refused with the command to run; a newer one (a rolling deploy, this binary
/// the older) is used with a warning.
pub(crate) async fn open_store(settings: &Settings) -> Result<SharedStore, CliError> {
    let store = connect_waiting(settings, false).await?;
    let version = store.schema_version().await?;
    let needed = store::SCHEMA_VERSION;
    if version < needed {
        return Err(CliError::Failed(format!(
            "the database {} {}, this steward needs version {needed}: run `steward migrate` first",
            crate::secrets::redact(&settings.database_url),
            if version == 0 {
                "has no steward schema".to_string()
            } else {
                format!("has schema version {version}")
            }
        )));
    }
    if version > needed {
        tracing::warn!(
            database_schema = version,
            this_build = needed,
            "the database's schema is newer than this steward: upgrade it"
        );
    }
    Ok(store)
}

/// Connect and migrate (`steward migrate`, the demo).
pub(crate) async fn open_store_migrated(settings: &Settings) -> Result<SharedStore, CliError> {
    connect_waiting(settings, true).await
}

/// Connect (and migrate, when asked), waiting for a database that is not up yet (a transient
/// error: refused connection, server starting) with backoff for up to `--db-wait-secs`, saying
/// what it waits for; a permanent error (bad URL, wrong password) fails at once.
async fn connect_waiting(settings: &Settings, migrate: bool) -> Result<SharedStore, CliError> {
    use backon::{ExponentialBuilder, Retryable};
    let url = settings.database_url.as_str();
    let connect_error = |source| CliError::Connect {
        url: crate::secrets::redact(url),
        source,
    };
    let wait = std::time::Duration::from_secs(settings.db_wait_secs);
    let backoff = ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(200))
        .with_max_delay(std::time::Duration::from_secs(5))
        .with_total_delay(Some(wait))
        .without_max_times();
    let connect = || async {
        let store = store::connect(url).await?;
        if migrate {
            store.migrate().await?;
        }
        Ok::<_, StoreError>(store)
    };
    connect
        .retry(backoff)
        .when(|err: &StoreError| !wait.is_zero() && err.is_transient())
        .notify(|err, next| {
            tracing::warn!(
                database = %crate::secrets::redact(url),
                error = %err,
                retry_in = ?next,
                "waiting for the database"
            )
        })
        .await
        .map_err(connect_error)
}

/// Load `jobs/*.toml`.
pub(crate) fn load_kinds(settings: &Settings) -> Result<KindCatalog, CliError> {
    let mut kinds = KindCatalog::load_dir(&settings.jobs_dir)?;
    crate::app::extensions().add_kinds(&mut kinds)?;
    Ok(kinds)
}

/// The job handlers: the built-in ones and those the [`crate::App`] added.
pub(crate) fn job_registry() -> crate::queue::Registry {
    let mut registry = crate::queue::builtin::registry();
    crate::app::extensions().register_jobs(&mut registry);
    registry
}

/// The workflow engine over `workflows/`, with the built-in step handlers.
pub(crate) fn load_engine(
    settings: &Settings,
    store: SharedStore,
    kinds: &KindCatalog,
) -> Result<std::sync::Arc<crate::workflow::Engine>, CliError> {
    let mut steps = crate::lifecycle::step_registry(settings.exports());
    crate::app::extensions().register_steps(&mut steps);
    let workflows =
        crate::workflow::WorkflowCatalog::load_dir(&settings.workflows_dir, kinds, &|h| {
            steps.contains(h)
        })?;
    Ok(crate::workflow::Engine::new(
        store,
        workflows,
        kinds.clone(),
        steps,
    ))
}

/// Say at start-up which runs in flight follow another version of their workflow than the
/// files loaded (they finish on their own steps), and which of them cannot finish here.
fn report_versions_in_flight(engine: &std::sync::Arc<crate::workflow::Engine>) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let engine = engine.clone();
    handle.spawn(async move {
        match engine.versions_in_flight().await {
            Ok(found) => {
                for v in found {
                    if v.handlers_missing.is_empty() {
                        tracing::warn!(workflow = %v.workflow, version = %v.version, runs = v.runs,
                            steps_gone = ?v.steps_gone,
                            "runs in flight started on another version of this workflow: they finish on its steps");
                    } else {
                        tracing::error!(workflow = %v.workflow, version = %v.version, runs = v.runs,
                            handlers_missing = ?v.handlers_missing,
                            "runs in flight need step handlers this binary does not have: they cannot finish here");
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "could not read the runs in flight"),
        }
    });
}

/// A worker runtime: the built-in job handlers, the workflow engine's step jobs, its run
/// sweeper and cron scheduler, and the provisioning reconciler.
pub(crate) fn build_runtime(
    settings: &Settings,
    store: SharedStore,
    kinds: KindCatalog,
    config: crate::queue::RuntimeConfig,
) -> Result<crate::queue::Runtime, CliError> {
    let engine = load_engine(settings, store.clone(), &kinds)?;
    report_versions_in_flight(&engine);
    let mut registry = job_registry();
    engine.register_jobs(&mut registry);
    let webhooks = crate::lifecycle::webhook::WebhookSender::new(
        std::time::Duration::from_secs(settings.webhook_timeout_secs),
        settings.webhook_policy().map_err(CliError::Usage)?,
        settings.secret_key().map_err(CliError::Usage)?,
    )
    .map_err(CliError::Failed)?;
    crate::lifecycle::webhook::register_jobs(&mut registry, webhooks);
    let periods = config.maintenance.clone();
    let sweeper = crate::workflow::RunSweeper {
        engine: engine.clone(),
        every: periods.sweep_every,
    };
    let scheduler =
        crate::workflow::scheduler::CronScheduler::new(engine.clone(), periods.cron_every);
    // The module lifecycle runs where its workflows are defined (a deployment with its own
    // workflows/ and no lifecycle has no reconciler).
    let lifecycle = crate::lifecycle::Lifecycle::new(engine).ok();
    if let Some(lifecycle) = &lifecycle {
        crate::lifecycle::subscriptions::register_jobs(&mut registry, lifecycle.clone());
    }
    let mut runtime = crate::queue::Runtime::new(store, registry, kinds, config)?
        .with_service(Box::new(sweeper))
        .with_service(Box::new(scheduler));
    if let Some(lifecycle) = lifecycle {
        runtime = runtime.with_service(Box::new(crate::lifecycle::ProvisioningReconciler {
            lifecycle,
            idle: periods.reconcile_idle,
            every: periods.reconcile_every,
        }));
    }
    Ok(runtime)
}

/// `steward serve`: the HTTP API and the dashboard.
async fn serve(settings: &Settings, listen: &str) -> Result<(), CliError> {
    let state = api_state(settings, open_store(settings).await?)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CliError::Failed(format!("cannot listen on {listen}: {e}")))?;
    eprintln!("steward API on http://{listen} (dashboard: http://{listen}/dashboard)");
    crate::http::serve(listener, state, shutdown_signal())
        .await
        .map_err(|e| CliError::Failed(e.to_string()))
}

/// Serve the API and the dashboard on `listen` beside a worker until `shutdown`; returns
/// the bound address.
pub(crate) async fn spawn_api(
    state: crate::api::AppState,
    listen: &str,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<std::net::SocketAddr, CliError> {
    spawn_app(crate::http::app(state), listen, shutdown).await
}

/// Serve `app` on `listen` (the default server limits) until `shutdown`; returns the bound
/// address.
pub(crate) async fn spawn_app(
    app: axum::Router,
    listen: &str,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<std::net::SocketAddr, CliError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CliError::Failed(format!("cannot listen on {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::Failed(e.to_string()))?;
    tokio::spawn(async move {
        let stop = async move { shutdown.cancelled().await };
        let limits = crate::http::ServerLimits::default();
        if let Err(err) = crate::http::serve_app(listener, app, limits, stop).await {
            tracing::error!(error = %err, %addr, "the HTTP listener stopped");
        }
    });
    Ok(addr)
}

/// What the API needs: the workflow engine over `store`, the export storage, the JWT keys;
/// and this process's metrics recorder.
pub(crate) fn api_state(
    settings: &Settings,
    store: SharedStore,
) -> Result<crate::api::AppState, CliError> {
    let keys = settings.auth_keys().map_err(CliError::Usage)?;
    let kinds = load_kinds(settings)?;
    let engine = load_engine(settings, store, &kinds)?;
    crate::api::prometheus::install();
    let mut state = crate::api::AppState::new(engine, settings.exports(), keys);
    if let Some(token) = &settings.metrics_token {
        state = state.with_metrics_token(token).map_err(CliError::Usage)?;
    }
    state.rollback_window =
        std::time::Duration::from_secs(settings.rollback_window_hours.saturating_mul(3600));
    Ok(state)
}

/// Resolve on SIGTERM or SIGINT.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// The operator at the CLI: a Master Admin (whoever runs it holds the database's
/// credentials), named `cli:$USER` in the audit log.
pub(crate) fn operator_actor() -> crate::domain::actor::Actor {
    crate::domain::actor::Actor::master_admin(format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    ))
}

#[cfg(test)]
mod tests {
    /// Every option and argument of every command says what it is.
    #[test]
    fn every_option_is_described() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" || arg.get_help().is_some() {
                    continue;
                }
                missing.push(format!("{path} {id}"));
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::command(), "steward", &mut missing);
        assert!(
            missing.is_empty(),
            "options without a description: {missing:#?}"
        );
    }

    #[test]
    fn the_schema_version_is_the_number_of_the_last_migration() {
        for backend in ["postgres", "sqlite"] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(backend);
            let last = std::fs::read_dir(dir)
                .unwrap()
                .filter_map(|e| {
                    e.ok()?
                        .file_name()
                        .to_str()?
                        .split('_')
                        .next()?
                        .parse()
                        .ok()
                })
                .max();
            assert_eq!(last, Some(crate::store::SCHEMA_VERSION), "{backend}");
        }
        assert!(
            super::VERSION.ends_with(&format!("(schema {})", crate::store::SCHEMA_VERSION)),
            "{}",
            super::VERSION
        );
    }
}
