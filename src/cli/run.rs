//! `meterd run [--config FILE] [--sandbox]`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use crate::clock::{Clock, OFFSET_ENV};
use crate::config::Config;
use crate::daemon::Host;
use crate::emulator::{Catalogue, Credential, Emulator, EmulatorConfig};
use crate::submit::{RegistrationRefused, SdkMeteringApi};
use crate::systemd::Notifier;

/// The sandbox's emulator keys (also in config/emulator.toml).
pub const SANDBOX_ACCESS_KEY: &str = "AKIDMETERDSANDBOX";
pub const SANDBOX_SECRET_KEY: &str = "meterd-sandbox-secret";

/// The sandbox's listing, as a seller's would be: these dimensions (others are refused
/// `unknown_dimension` at ingest, and by its Metering Service), and one subscribed customer
/// (records of any other get `CustomerNotSubscribed`).
pub const SANDBOX_DIMENSIONS: [&str; 2] = ["requests", "storage_gb"];
pub const SANDBOX_CUSTOMER: &str = "111122223333";

/// Defaults of `--sandbox`: everything under `./meterd-sandbox`, metrics on a free loopback port
/// (printed at start), so that several sandboxes never collide.
pub fn sandbox_defaults() -> Config {
    let mut config = Config::default();
    config.aws.product_code = "prod-sandbox".into();
    config.aws.dimensions = SANDBOX_DIMENSIONS.map(String::from).to_vec();
    config.ingest.socket = "meterd-sandbox/meterd.sock".into();
    config.storage.data_dir = "meterd-sandbox/data".into();
    config.admin.socket = "meterd-sandbox/admin.sock".into();
    config.metrics.listen = "127.0.0.1:0".parse().expect("a valid address");
    config
}

/// Loads the configuration and runs the daemon; returns the process's exit code.
pub fn run(file: Option<&Path>, sandbox: bool) -> ExitCode {
    // First, while meterd is still one thread: taking the passed socket clears LISTEN_FDS.
    let activated_socket = match crate::systemd::take_activated_socket() {
        Ok(socket) => socket,
        Err(err) => {
            eprintln!("meterd: {err}");
            return ExitCode::from(super::EXIT_CONFIG);
        }
    };
    let base = if sandbox { sandbox_defaults() } else { Config::default() };
    let config = match Config::load_over(base.clone(), file).and_then(Config::check_billing) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("meterd: {err}");
            return ExitCode::from(super::EXIT_CONFIG);
        }
    };
    let clock = match Clock::from_env() {
        Ok(clock) => clock,
        Err(err) => {
            eprintln!("meterd: {err}");
            return ExitCode::from(super::EXIT_CONFIG);
        }
    };
    crate::telemetry::init(config.log.format, &config.log.level);
    tracing::info!(version = env!("CARGO_PKG_VERSION"), sandbox, "meterd starting");
    if clock.offset_secs() != 0 {
        tracing::warn!(
            offset_secs = clock.offset_secs(),
            "{OFFSET_ENV} is set: meterd's clock is shifted (tests only)"
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("meterd: failed to start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let file = file.map(Path::to_path_buf);
    let host = Host {
        activated_socket,
        notifier: Notifier::from_env(),
        reload: Some(Box::new(move || Config::load_over(base.clone(), file.as_deref()))),
        sandbox,
    };
    match runtime.block_on(serve(config, clock, host, sandbox)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("meterd: {err:#}");
            match err.downcast_ref::<RegistrationRefused>() {
                Some(refused) => ExitCode::from(refused.exit_code),
                None => {
                    tracing::error!("{err:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn serve(mut config: Config, clock: Clock, host: Host, sandbox: bool) -> anyhow::Result<()> {
    let shutdown = crate::telemetry::shutdown_signal();
    if !sandbox {
        let endpoint = (!config.aws.endpoint_url.is_empty()).then_some(config.aws.endpoint_url.as_str());
        let api =
            SdkMeteringApi::from_default_chain(&config.aws.region, endpoint, config.submit.request_timeout)
                .await;
        return crate::daemon::run(config, clock, api, host, shutdown, |_| {}).await;
    }
    let emulator_config = EmulatorConfig {
        region: config.aws.region.clone(),
        credentials: vec![Credential {
            access_key_id: SANDBOX_ACCESS_KEY.into(),
            secret_access_key: SANDBOX_SECRET_KEY.into(),
        }],
        catalogue: Catalogue {
            product_codes: Some(vec![config.aws.product_code.clone()]),
            dimensions: Some(SANDBOX_DIMENSIONS.map(String::from).to_vec()),
            subscribed_customers: Some(vec![SANDBOX_CUSTOMER.into()]),
            ..Catalogue::default()
        },
        ..EmulatorConfig::default()
    };
    let emulator = Emulator::new(emulator_config).start("127.0.0.1:0".parse()?).await?;
    config.aws.endpoint_url = emulator.endpoint_url();
    let api = SdkMeteringApi::with_static_credentials(
        &config.aws.region,
        &config.aws.endpoint_url,
        SANDBOX_ACCESS_KEY,
        SANDBOX_SECRET_KEY,
        config.submit.request_timeout,
    );
    let url = emulator.endpoint_url();
    crate::daemon::run(config, clock, api, host, shutdown, |endpoints| print_sandbox(endpoints, &url)).await
}

fn print_sandbox(endpoints: &crate::daemon::Endpoints, emulator_url: &str) {
    let socket = endpoints.socket.display();
    let socket_flag = if endpoints.socket == Path::new("meterd-sandbox/meterd.sock") {
        " --sandbox".to_string()
    } else {
        format!(" --socket {socket}")
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "meterd sandbox is running (Ctrl-C stops it)\n\
         \x20 ingest socket:  {socket}\n\
         \x20 metrics:        http://{metrics}/metrics\n\
         \x20 emulator:       {emulator_url}  (records: {emulator_url}/_emulator/records)\n\
         its listing: dimensions {dimensions}; customer {SANDBOX_CUSTOMER} is subscribed, others are not\n\
         send an event:\n\
         \x20 cargo run -- send{socket_flag} --customer-aws-account-id {SANDBOX_CUSTOMER} --dimension requests --quantity 5\n\
         bill the open hour now (the sandbox only; meterd otherwise seals an hour after it ends):\n\
         \x20 cargo run -- flush --sandbox --all\n\
         see what meterd holds and what was billed:\n\
         \x20 cargo run -- status --sandbox\n\
         \x20 cargo run -- receipts export --sandbox --since 0",
        metrics = endpoints.metrics,
        dimensions = SANDBOX_DIMENSIONS.join(", "),
    );
    let _ = out.flush();
}
