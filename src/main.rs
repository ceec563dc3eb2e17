//! The `meterd` command: parses the command line and hands over to the library.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use meterd::cli::EXIT_CONFIG;
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
    /// Run a local AWS Marketplace Metering Service emulator.
    Emulator {
        /// Address to listen on; port 0 picks a free port. The URL is printed on stdout's first line.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// TOML file with the emulator's catalogue, window, quota and credentials.
        #[arg(long)]
        config: Option<PathBuf>,
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
    #[arg(long)]
    dimension: Option<String>,
    #[arg(long)]
    quantity: Option<u64>,
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
                dimension: args.dimension,
                quantity: args.quantity,
                timestamp: args.timestamp,
                tags: args.tags,
                id: args.id,
            };
            meterd::cli::send::send(&socket, &flags, args.file.as_ref())
        }
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
