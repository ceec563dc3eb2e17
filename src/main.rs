//! The `meterd` command: parses the command line and hands over to the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use meterd::emulator::{Emulator, EmulatorConfig};
use std::io::Write;

/// Exit code for a configuration error (EX_CONFIG would be 78; meterd follows sysexits' EX_USAGE, 64).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(name = "meterd", version, about = "Durable metering agent for AWS Marketplace sellers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    meterd::telemetry::init_stderr();
    match cli.command {
        Command::Emulator { listen, config } => {
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
