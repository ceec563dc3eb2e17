//! The `meterd` command: parses the command line and hands over to the library.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use meterd::admin::Selection;
use meterd::cli::EXIT_CONFIG;
use meterd::cli::admin::{self, Format, parse_time};
use meterd::cli::send::EventFlags;
use meterd::emulator::{Emulator, EmulatorConfig};

#[derive(Parser)]
#[command(name = "meterd", version, about = "Durable metering agent for AWS Marketplace sellers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: ingest socket, outbox, hourly aggregation, submission.
    Run {
        /// TOML configuration file (see config/meterd.toml); METERD_<SECTION>__<KEY> variables override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Submit to a built-in emulator instead of AWS; keeps its files under ./meterd-sandbox.
        #[arg(long)]
        sandbox: bool,
    },
    /// Send usage events to a running meterd and print its replies.
    Send(SendArgs),
    /// Show what the daemon holds: records by state, the oldest unsubmitted record, the last
    /// submission, dead letters, outbox size. Reads the data dir when the daemon is stopped.
    Status {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long)]
        json: bool,
    },
    /// Inspect and repair dead letters: records the service will never accept as they are.
    Dlq {
        #[command(flatten)]
        target: TargetArgs,
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Accepted records with their MeteringRecordIds, for reconciliation.
    Receipts {
        #[command(flatten)]
        target: TargetArgs,
        #[command(subcommand)]
        action: ReceiptsAction,
    },
    /// Seal a customer's open hours now, the current one included, and submit them at once (for
    /// a customer who is unsubscribing). Later events for those hours go to the next hour.
    Flush {
        #[command(flatten)]
        target: TargetArgs,
        /// The customer's AWS account id or customer identifier.
        #[arg(long, required_unless_present = "all")]
        customer: Option<String>,
        /// Only this product's records (with several products configured); the customer's
        /// records that name a license ARN are flushed with any product.
        #[arg(long, requires = "customer")]
        product_code: Option<String>,
        /// Every open hour of every customer: the sandbox only, to see a record billed now.
        #[arg(long, conflicts_with = "customer")]
        all: bool,
    },
    /// One customer: its subscription lifecycle as notifications reported it, its open hours and
    /// its sealed records by state.
    Customer {
        #[command(flatten)]
        target: TargetArgs,
        /// The customer's AWS account id or customer identifier.
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Fleet mode: the hosts, the submitter lease, hours waiting and for whom, records by state
    /// and late partials, read from the fleet's PostgreSQL.
    Fleet {
        #[command(subcommand)]
        action: FleetAction,
    },
    /// Validate a configuration and print every problem (exit 64 if any).
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        sandbox: bool,
    },
    /// Check that the credentials may call MeterUsage, with a DryRun (aws.mode = "meter_usage").
    CheckAws {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The dimension the DryRun names; default: the first of aws.dimensions.
        #[arg(long)]
        dimension: Option<String>,
    },
    /// Ask a running meterd's /healthz (live) or /readyz (ready); exit 0 only on 200. For
    /// container health checks.
    Probe {
        #[arg(value_enum)]
        which: meterd::cli::probe::Probe,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Call ResolveCustomer for a SaaS registration token and print whom it names.
    ResolveCustomer {
        token: String,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Run a local AWS Marketplace Metering Service emulator.
    Emulator {
        /// Address to listen on; port 0 picks a free port. The URL is printed on stdout's first line.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// TOML file with the emulator's catalogue, window, quota and credentials.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print a shell completion script to stdout (the packages install bash, zsh and fish ones).
    Completions {
        #[arg(value_enum)]
        shell: meterd::cli::generate::Shell,
    },
    /// Write meterd.1 and one man page per subcommand into DIR (for packaging).
    #[command(hide = true)]
    Manpages { dir: PathBuf },
}

/// How the operator commands find meterd.
#[derive(Args)]
struct TargetArgs {
    /// The daemon's configuration file (for its admin socket and data dir).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// The sandbox's daemon (meterd-sandbox/).
    #[arg(long, global = true)]
    sandbox: bool,
    /// The admin socket, overriding the configuration's admin.socket.
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
}

#[derive(Subcommand)]
enum FleetAction {
    /// What the fleet database holds now.
    Status {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    /// One line per dead letter.
    List,
    /// One dead letter, whole, as JSON.
    Show { id: String },
    /// Put dead letters back in the queue unchanged (after the customer subscribed, say).
    Retry {
        ids: Vec<String>,
        #[arg(long)]
        all: bool,
        /// With --all: only dead letters of this reason.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Delete dead letters for good.
    Drop {
        ids: Vec<String>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        reason: Option<String>,
        /// Required: dropped usage is never billed.
        #[arg(long)]
        yes: bool,
    },
    /// Every dead letter as CSV or JSON.
    Export {
        #[arg(long, value_enum, default_value = "csv")]
        format: Format,
    },
}

#[derive(Subcommand)]
enum ReceiptsAction {
    /// Accepted records whose hour starts in [--since, --until).
    Export {
        /// RFC 3339 or epoch seconds.
        #[arg(long, value_parser = parse_time)]
        since: i64,
        /// RFC 3339 or epoch seconds; default: now.
        #[arg(long, value_parser = parse_time)]
        until: Option<i64>,
        #[arg(long, value_enum, default_value = "csv")]
        format: Format,
    },
}

#[derive(Args)]
struct SendArgs {
    /// The ingest socket.
    #[arg(long, env = "METERD_INGEST__SOCKET", default_value = "/run/meterd/meterd.sock")]
    socket: PathBuf,
    /// Use the sandbox's socket (meterd-sandbox/meterd.sock).
    #[arg(long, conflicts_with = "socket")]
    sandbox: bool,
    /// NDJSON events to send ("-" or absent: stdin), when no event flags are given.
    #[arg(long)]
    file: Option<PathBuf>,
    #[arg(long)]
    customer_aws_account_id: Option<String>,
    #[arg(long)]
    customer_identifier: Option<String>,
    #[arg(long)]
    license_arn: Option<String>,
    /// The product, when meterd serves several (aws.products).
    #[arg(long)]
    product_code: Option<String>,
    #[arg(long)]
    dimension: Option<String>,
    /// Sent as given: meterd itself answers a quantity it refuses (negative, fractional, too
    /// large) with `invalid_field`, as it would from any client.
    #[arg(long, allow_negative_numbers = true)]
    quantity: Option<String>,
    /// RFC 3339 or epoch seconds; default: when meterd receives it.
    #[arg(long)]
    timestamp: Option<String>,
    /// KEY=VALUE; repeat for up to five tags.
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Idempotency key: resending the same id is answered `duplicate` and not counted again.
    #[arg(long)]
    id: Option<String>,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run { config, sandbox } => meterd::cli::run::run(config.as_deref(), sandbox),
        Command::Send(args) => {
            let socket = if args.sandbox { PathBuf::from("meterd-sandbox/meterd.sock") } else { args.socket };
            let flags = EventFlags {
                customer_aws_account_id: args.customer_aws_account_id,
                customer_identifier: args.customer_identifier,
                license_arn: args.license_arn,
                product_code: args.product_code,
                dimension: args.dimension,
                quantity: args.quantity,
                timestamp: args.timestamp,
                tags: args.tags,
                id: args.id,
            };
            meterd::cli::send::send(&socket, &flags, args.file.as_ref())
        }
        Command::Status { target, json } => with_target(target, |t| admin::status(t, json)),
        Command::Dlq { target, action } => with_target(target, |t| match action {
            DlqAction::List => admin::dlq_list(t),
            DlqAction::Show { id } => admin::dlq_show(t, &id),
            DlqAction::Retry { ids, all, reason } => {
                admin::dlq_change(t, Selection { ids, all, reason }, true)
            }
            DlqAction::Drop { yes: false, .. } => {
                eprintln!("meterd: dropping dead letters deletes unbilled usage for good; add --yes");
                ExitCode::from(2)
            }
            DlqAction::Drop { ids, all, reason, yes: true } => {
                admin::dlq_change(t, Selection { ids, all, reason }, false)
            }
            DlqAction::Export { format } => admin::dlq_export(t, format),
        }),
        Command::Receipts { target, action: ReceiptsAction::Export { since, until, format } } => {
            let until = until.unwrap_or_else(|| meterd::clock::Clock::default().now() + 1);
            with_target(target, |t| admin::receipts_export(t, since, until, format))
        }
        Command::Flush { target, customer, product_code, all: _ } => {
            with_target(target, |t| admin::flush(t, customer, product_code))
        }
        Command::Customer { target, id, json } => with_target(target, |t| admin::customer(t, &id, json)),
        Command::CheckConfig { config, sandbox } => admin::check_config(config.as_deref(), sandbox),
        Command::ResolveCustomer { token, config, json } => {
            with_config(config, |config| admin::resolve_customer(config, &token, json))
        }
        Command::CheckAws { config, dimension } => {
            with_config(config, |config| admin::check_aws(config, dimension))
        }
        Command::Fleet { action: FleetAction::Status { config, json } } => {
            with_config(config, |config| meterd::cli::fleet::status(config, json))
        }
        Command::Probe { which, config } => {
            with_config(config, |config| meterd::cli::probe::probe(config, which))
        }
        Command::Completions { shell } => {
            meterd::cli::generate::completions(Cli::command(), shell, &mut std::io::stdout())
        }
        Command::Manpages { dir } => meterd::cli::generate::manpages(Cli::command(), &dir),
        Command::Emulator { listen, config } => {
            meterd::telemetry::init_stderr();
            let config = match EmulatorConfig::load(config.as_deref()) {
                Ok(config) => config,
                Err(err) => {
                    eprintln!("meterd: {err}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            match run_emulator(listen, config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("meterd: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn with_target(args: TargetArgs, command: impl FnOnce(&admin::Target) -> ExitCode) -> ExitCode {
    match admin::Target::load(args.config.as_deref(), args.sandbox, args.socket) {
        Ok(target) => command(&target),
        Err(code) => code,
    }
}

#[tokio::main]
async fn run_emulator(listen: SocketAddr, config: EmulatorConfig) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|err| anyhow::anyhow!("failed to listen on {listen}: {err}"))?;
    let addr = listener.local_addr()?;
    // Scripts and tests read the chosen address from the first line.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "http://{addr}")?;
    stdout.flush()?;
    drop(stdout);
    tracing::info!(%addr, region = %config.region, "emulator listening");
    Emulator::new(config).serve(listener, meterd::telemetry::shutdown_signal()).await?;
    tracing::info!("emulator stopped");
    Ok(())
}

/// Loads the configuration (file and environment) and runs `f`, or exits 64 naming every problem.
fn with_config(file: Option<PathBuf>, f: impl FnOnce(&meterd::config::Config) -> ExitCode) -> ExitCode {
    match meterd::config::Config::load(file.as_deref()) {
        Ok(config) => f(&config),
        Err(err) => {
            eprintln!("meterd: {err}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}
