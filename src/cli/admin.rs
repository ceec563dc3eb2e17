//! The operator's commands: `status`, `dlq …`, `receipts export`, `check-config` and
//! `resolve-customer`. They ask the running daemon over its admin socket; with the daemon stopped,
//! `status`, `dlq list|show|export` and `receipts export` read the data dir directly.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::admin::{Line, RecordView, Request, Selection, StatusReport, offline_status};
use crate::config::Config;
use crate::model::Mode;
use crate::outbox::{Outbox, OutboxError};
use crate::submit::SdkMeteringApi;
use crate::submit::api::FailureKind;

/// Exit code when the daemon refused the request or the data could not be read.
const EXIT_FAILED: u8 = 1;

/// Where the commands find meterd: its configuration (for the data dir and deadline) and its
/// admin socket.
pub struct Target {
    pub config: Config,
    pub socket: PathBuf,
}

impl Target {
    /// `--config`, `--sandbox` and `--socket` as given; a config error exits 64.
    pub fn load(file: Option<&Path>, sandbox: bool, socket: Option<PathBuf>) -> Result<Self, ExitCode> {
        let base = if sandbox { super::run::sandbox_defaults() } else { Config::default() };
        match Config::load_over(base, file) {
            Ok(config) => {
                let socket = socket.unwrap_or_else(|| config.admin.socket.clone());
                Ok(Target { config, socket })
            }
            Err(err) => {
                eprintln!("meterd: {err}");
                Err(ExitCode::from(super::EXIT_CONFIG))
            }
        }
    }

    /// Sends `request`; `Ok(None)` when no daemon listens on the socket.
    fn ask(&self, request: &Request) -> Result<Option<Vec<Line>>, String> {
        let mut lines = Vec::new();
        let answered = self.ask_each(request, &mut |line| {
            lines.push(line);
            Ok(())
        })?;
        Ok(answered.then_some(lines))
    }

    /// Sends `request` and hands each answer line to `each` as it arrives; `Ok(false)` when no
    /// daemon listens on the socket.
    fn ask_each(
        &self,
        request: &Request,
        each: &mut dyn FnMut(Line) -> Result<(), String>,
    ) -> Result<bool, String> {
        let mut stream = match UnixStream::connect(&self.socket) {
            Ok(stream) => stream,
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(false);
            }
            Err(err) => return Err(format!("cannot reach meterd at {}: {err}", self.socket.display())),
        };
        let mut text = serde_json::to_string(request).expect("requests encode");
        text.push('\n');
        stream.write_all(text.as_bytes()).map_err(|e| format!("cannot send to meterd: {e}"))?;
        for line in BufReader::with_capacity(256 * 1024, stream).lines() {
            let line = line.map_err(|e| format!("cannot read meterd's answer: {e}"))?;
            each(serde_json::from_str(&line).map_err(|e| format!("unexpected answer {line:?}: {e}"))?)?;
        }
        Ok(true)
    }

    /// Reads the data dir of a stopped daemon, without writing to it (a private copy: see
    /// `Outbox::open_read_only`). A data dir that does not exist or holds no outbox is an error:
    /// with no daemon to ask and nothing to read, there is no status to give.
    fn open_offline(&self) -> Result<(Outbox, crate::outbox::Recovered), String> {
        match Outbox::open_read_only(&self.config.storage.data_dir) {
            Ok((outbox, recovered, lost)) => {
                if let Some(lost) = lost {
                    eprintln!("meterd: warning: {lost}");
                }
                Ok((outbox, recovered))
            }
            Err(err @ (OutboxError::NoDataDir { .. } | OutboxError::NoOutbox { .. })) => {
                Err(format!("{err}; name meterd's data dir with --config or METERD_STORAGE__DATA_DIR"))
            }
            Err(OutboxError::Locked { pid, .. }) => Err(format!(
                "meterd (pid {pid}) holds {} but its admin socket {} does not answer",
                self.config.storage.data_dir.display(),
                self.socket.display()
            )),
            Err(err) => Err(err.to_string()),
        }
    }

    /// Sealed records: from the daemon if it runs, else from the data dir.
    fn records(&self, request: Request) -> Result<Vec<RecordView>, String> {
        match self.ask(&request)? {
            Some(lines) => {
                let mut out = Vec::new();
                for line in lines {
                    match line {
                        Line::Record { record } => out.push(*record),
                        Line::Error { error, .. } => return Err(error),
                        _ => {}
                    }
                }
                Ok(out)
            }
            None => {
                let (outbox, _) = self.open_offline()?;
                let mut out = Vec::new();
                for stored in outbox.records() {
                    let stored = stored.map_err(|e| e.to_string())?;
                    if request.lists(&stored) {
                        out.push(RecordView::new(&stored));
                    }
                }
                Ok(out)
            }
        }
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("meterd: {message}");
    ExitCode::from(EXIT_FAILED)
}

/// `meterd status [--json]`.
pub fn status(target: &Target, json: bool) -> ExitCode {
    let report = match target.ask(&Request::Status) {
        Ok(Some(lines)) => match lines.into_iter().next() {
            Some(Line::Status { status, .. }) => *status,
            Some(Line::Error { error, .. }) => return fail(error),
            _ => return fail("meterd gave no status"),
        },
        Ok(None) => match target.open_offline() {
            Ok((outbox, recovered)) => {
                let clock = crate::clock::Clock::from_env().unwrap_or_default();
                let report = offline_status(
                    &recovered,
                    &target.config.storage.data_dir.display().to_string(),
                    outbox.size_on_disk().unwrap_or(0),
                    outbox.archive_totals(),
                    target.config.deadline().as_secs() as i64,
                    clock.now(),
                );
                match report {
                    Ok(report) => report,
                    Err(err) => return fail(err),
                }
            }
            Err(err) => return fail(err),
        },
        Err(err) => return fail(err),
    };
    print_status(&report, json);
    ExitCode::SUCCESS
}

fn print_status(report: &StatusReport, json: bool) {
    let mut out = std::io::stdout().lock();
    let text = if json {
        serde_json::to_string_pretty(report).expect("a report encodes") + "\n"
    } else {
        report.text()
    };
    let _ = out.write_all(text.as_bytes());
}

/// Output formats of `export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Json,
}

fn print_records(records: &[RecordView], format: Format) {
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => {
            let _ = writeln!(out, "{}", serde_json::to_string_pretty(records).expect("records encode"));
        }
        Format::Csv => {
            let _ = writeln!(out, "{}", RecordView::CSV_HEADER);
            for record in records {
                let _ = writeln!(out, "{}", record.csv_row());
            }
        }
    }
}

/// `meterd dlq list`: one line per dead letter for a person.
pub fn dlq_list(target: &Target) -> ExitCode {
    match target.records(Request::DlqList) {
        Ok(records) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "{:<12}  {:<20}  {:<24}  {:<20}  {:>10}  {:<23}  MESSAGE",
                "ID", "HOUR", "CUSTOMER", "DIMENSION", "QUANTITY", "REASON"
            );
            for r in &records {
                let customer = r
                    .customer_aws_account_id
                    .as_ref()
                    .or(r.customer_identifier.as_ref())
                    .cloned()
                    .unwrap_or_else(|| "(caller)".into());
                let _ = writeln!(
                    out,
                    "{:<12}  {:<20}  {:<24}  {:<20}  {:>10}  {:<23}  {}",
                    r.id,
                    r.hour,
                    customer,
                    r.dimension,
                    r.quantity,
                    r.reason.as_deref().unwrap_or(""),
                    r.message.as_deref().unwrap_or("")
                );
            }
            let _ = writeln!(out, "{} dead letter(s)", records.len());
            ExitCode::SUCCESS
        }
        Err(err) => fail(err),
    }
}

/// `meterd dlq show ID`: the whole record as JSON.
pub fn dlq_show(target: &Target, id: &str) -> ExitCode {
    let request = Request::DlqShow { id: id.to_string() };
    match target.records(request) {
        Ok(records) => match records.into_iter().find(|r| r.id == id) {
            Some(record) => {
                println!("{}", serde_json::to_string_pretty(&record).expect("a record encodes"));
                ExitCode::SUCCESS
            }
            None => fail(format!("no dead letter with id {id}")),
        },
        Err(err) => fail(err),
    }
}

/// `meterd dlq export --format csv|json`.
pub fn dlq_export(target: &Target, format: Format) -> ExitCode {
    match target.records(Request::DlqList) {
        Ok(records) => {
            print_records(&records, format);
            ExitCode::SUCCESS
        }
        Err(err) => fail(err),
    }
}

/// Asks the running daemon `request` and hands its answer's last line to `answer` (an error
/// line fails); `needs` says why the daemon must run, for when it does not.
fn ask_running(
    target: &Target,
    request: &Request,
    needs: &str,
    answer: impl FnOnce(Line) -> ExitCode,
) -> ExitCode {
    match target.ask(request) {
        Ok(Some(lines)) => match lines.into_iter().last() {
            Some(Line::Error { error, .. }) => fail(error),
            Some(line) => answer(line),
            None => fail("meterd gave no answer"),
        },
        Ok(None) => {
            fail(format!("meterd is not running (no admin socket at {}); {needs}", target.socket.display()))
        }
        Err(err) => fail(err),
    }
}

/// `meterd dlq retry|drop`: needs the running daemon, which owns the records' states.
pub fn dlq_change(target: &Target, selection: Selection, retry: bool) -> ExitCode {
    let request = if retry { Request::DlqRetry { selection } } else { Request::DlqDrop { selection } };
    ask_running(target, &request, "start it to retry or drop dead letters", |line| match line {
        Line::Count { count, .. } => {
            println!("{} {count} dead letter(s)", if retry { "retried" } else { "dropped" });
            ExitCode::SUCCESS
        }
        _ => fail("meterd gave no answer"),
    })
}

/// `meterd flush --customer ID [--product-code P]` (or `--all`, sandbox only): needs the running
/// daemon, which owns the open hours.
pub fn flush(target: &Target, customer: Option<String>, product_code: Option<String>) -> ExitCode {
    let products = target.config.aws.products();
    if let Some(code) = &product_code
        && !products.iter().any(|p| &p.code == code)
    {
        let configured: Vec<String> = products.iter().map(|p| format!("{:?}", p.code)).collect();
        return fail(format!(
            "--product-code {code:?} is not a configured product (configured: {})",
            configured.join(", ")
        ));
    }
    let request = Request::Flush { customer, product_code };
    ask_running(target, &request, "only a running meterd holds open hours", |line| match line {
        Line::Count { count, .. } => {
            println!("sealed {count} record(s); they are submitted now");
            ExitCode::SUCCESS
        }
        _ => fail("meterd gave no answer"),
    })
}

/// `meterd customer ID [--json]`: needs the running daemon, which holds the open hours and the
/// notification consumer's ledger.
pub fn customer(target: &Target, id: &str, json: bool) -> ExitCode {
    let request = Request::Customer { id: id.to_string() };
    ask_running(target, &request, "only a running meterd holds open hours", |line| match line {
        Line::Customer { customer, .. } => {
            let text = if json {
                serde_json::to_string_pretty(&customer).expect("a view encodes") + "\n"
            } else {
                customer.text()
            };
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        _ => fail("meterd gave no answer"),
    })
}

/// `meterd receipts export --since … --until …`: accepted records whose hour starts in the range,
/// printed as they arrive (from the daemon, or read from the archive and sled of a stopped one).
pub fn receipts_export(target: &Target, since: i64, until: i64, format: Format) -> ExitCode {
    let mut printer = Printer::new(format);
    let mut ended = false;
    let asked = target.ask_each(&Request::Receipts { since, until }, &mut |line| match line {
        Line::Record { record } => printer.record(&record),
        Line::Error { error, .. } => Err(error),
        _ => {
            ended = true;
            Ok(())
        }
    });
    let read = match asked {
        Ok(true) if ended => Ok(()),
        Ok(true) => Err("meterd closed the connection before the export ended".to_string()),
        Ok(false) => target.open_offline().and_then(|(outbox, _)| {
            let mut failed = Ok(());
            outbox
                .receipts(since..until, &mut |stored| {
                    if failed.is_ok() {
                        failed = printer.record(&RecordView::new(&stored));
                    }
                })
                .map_err(|e| e.to_string())?;
            failed
        }),
        Err(err) => Err(err),
    };
    match read.and_then(|()| printer.finish()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(err),
    }
}

/// Writes records as `print_records` would, one at a time: the CSV header first, or a JSON array
/// laid out as `serde_json::to_string_pretty` lays out the whole list.
struct Printer {
    out: std::io::BufWriter<std::io::Stdout>,
    format: Format,
    count: usize,
}

impl Printer {
    fn new(format: Format) -> Self {
        Printer { out: std::io::BufWriter::with_capacity(256 * 1024, std::io::stdout()), format, count: 0 }
    }

    fn record(&mut self, record: &RecordView) -> Result<(), String> {
        let written = match self.format {
            Format::Csv if self.count == 0 => {
                writeln!(self.out, "{}\n{}", RecordView::CSV_HEADER, record.csv_row())
            }
            Format::Csv => writeln!(self.out, "{}", record.csv_row()),
            Format::Json => {
                let text = serde_json::to_string_pretty(record).expect("a record encodes");
                let open = if self.count == 0 { "[\n" } else { ",\n" };
                let indented: Vec<String> = text.lines().map(|line| format!("  {line}")).collect();
                write!(self.out, "{open}{}", indented.join("\n"))
            }
        };
        self.count += 1;
        written.map_err(|e| format!("cannot write the export: {e}"))
    }

    fn finish(mut self) -> Result<(), String> {
        let written = match (self.format, self.count) {
            (Format::Csv, 0) => writeln!(self.out, "{}", RecordView::CSV_HEADER),
            (Format::Csv, _) => Ok(()),
            (Format::Json, 0) => writeln!(self.out, "[]"),
            (Format::Json, _) => writeln!(self.out, "\n]"),
        };
        written.and_then(|()| self.out.flush()).map_err(|e| format!("cannot write the export: {e}"))
    }
}

/// A time argument: RFC 3339 or epoch seconds.
pub fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(secs) = text.parse::<i64>() {
        return Ok(secs);
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| format!("{text:?} is neither RFC 3339 nor epoch seconds: {e}"))
}

/// `meterd check-config`: every problem, exit 64 if any.
pub fn check_config(file: Option<&Path>, sandbox: bool) -> ExitCode {
    let base = if sandbox { super::run::sandbox_defaults() } else { Config::default() };
    match Config::load_over(base, file).and_then(Config::check_billing) {
        Ok(config) => {
            let source = file.map_or("built-in defaults".to_string(), |f| f.display().to_string());
            println!("configuration OK ({source}, with METERD_* overrides)");
            for product in config.aws.products() {
                let dimensions = match product.dimensions.as_slice() {
                    [] => "any".to_string(),
                    listed => listed.join(", "),
                };
                println!("  product code: {:?} (dimensions: {dimensions})", product.code);
            }
            println!("  ingest socket: {}", config.ingest.socket.display());
            println!("  admin socket: {}", config.admin.socket.display());
            println!("  data dir: {}", config.storage.data_dir.display());
            println!("  metrics: {}", config.metrics.listen);
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("meterd: {err}");
            ExitCode::from(super::EXIT_CONFIG)
        }
    }
}

/// `meterd resolve-customer TOKEN`: ResolveCustomer with the configured region, endpoint and the
/// default credential chain.
pub fn resolve_customer(config: &Config, token: &str, json: bool) -> ExitCode {
    let result = match with_api(config, |api| async move { api.resolve_customer(token).await }) {
        Ok(result) => result,
        Err(code) => return code,
    };
    match result {
        Ok(resolved) if json => {
            println!("{}", serde_json::to_string_pretty(&resolved).expect("encodes"));
            ExitCode::SUCCESS
        }
        Ok(resolved) => {
            let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            println!("CustomerAWSAccountId: {}", show(&resolved.customer_aws_account_id));
            println!("CustomerIdentifier:   {}", show(&resolved.customer_identifier));
            println!("LicenseArn:           {}", show(&resolved.license_arn));
            println!("ProductCode:          {}", show(&resolved.product_code));
            ExitCode::SUCCESS
        }
        Err(err) => fail(format!("ResolveCustomer failed: {err}")),
    }
}

/// Runs one call on an SDK client with the configured region, endpoint and the default credential
/// chain, on a runtime of its own.
fn with_api<T, F: std::future::Future<Output = T>>(
    config: &Config,
    call: impl FnOnce(SdkMeteringApi) -> F,
) -> Result<T, ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(fail)?;
    let endpoint = (!config.aws.endpoint_url.is_empty()).then_some(config.aws.endpoint_url.as_str());
    Ok(runtime.block_on(async {
        let api =
            SdkMeteringApi::from_default_chain(&config.aws.region, endpoint, config.submit.request_timeout)
                .await;
        call(api).await
    }))
}

/// `meterd check-aws [--dimension D]`: a MeterUsage `DryRun`, which tells whether these credentials
/// may call MeterUsage without metering anything.
pub fn check_aws(config: &Config, dimension: Option<String>) -> ExitCode {
    if config.aws.mode != Mode::MeterUsage {
        eprintln!(
            "meterd: check-aws runs a MeterUsage DryRun, which needs aws.mode = \"meter_usage\"; \
             BatchMeterUsage has no DryRun (`meterd resolve-customer TOKEN` checks SaaS credentials)"
        );
        return ExitCode::from(super::EXIT_CONFIG);
    }
    let Some(dimension) = dimension
        .or_else(|| config.aws.products().swap_remove(0).dimensions.first().cloned())
        .or_else(|| config.submit.heartbeat_dimensions.first().cloned())
    else {
        eprintln!("meterd: name a dimension with --dimension (aws.dimensions is empty)");
        return ExitCode::from(super::EXIT_CONFIG);
    };
    let product = config.aws.single_product().unwrap_or_default();
    let now = crate::clock::Clock::default().now();
    let result =
        match with_api(config, |api| async move { api.meter_usage_dry_run(&product, &dimension, now).await })
        {
            Ok(result) => result,
            Err(code) => return code,
        };
    let region = &config.aws.region;
    let product = &config.aws.single_product().unwrap_or_default();
    let Err(failure) = result else {
        println!(
            "ok: these credentials may call aws-marketplace:MeterUsage for product {product} in {region} \
             (the DryRun was answered DryRunOperation; nothing was metered)"
        );
        return ExitCode::SUCCESS;
    };
    let advice = match (&failure.kind, failure.code()) {
        (_, Some("UnauthorizedException" | "AccessDeniedException")) => {
            "not allowed: these credentials may not call aws-marketplace:MeterUsage. Grant it to the \
             instance profile, task role or service account (docs/deploy.md has the policy)"
                .to_string()
        }
        (FailureKind::Local, _) => "no usable AWS credentials: meterd looks in the environment, the \
             profile files, the ECS task role, EKS IRSA and the EC2 instance profile, in that order"
            .to_string(),
        (FailureKind::Timeout | FailureKind::Connection, _) => format!(
            "the Metering Service did not answer{}; check the network path (VPC endpoint, proxy, \
             security group) from this host",
            if config.aws.endpoint_url.is_empty() {
                String::new()
            } else {
                format!(" at {}", config.aws.endpoint_url)
            }
        ),
        (_, Some(code)) => format!("the service refused the DryRun with {code}"),
        (_, None) => "the DryRun failed".to_string(),
    };
    eprintln!("meterd: {advice}\n  the service said: {}", failure.message);
    ExitCode::from(EXIT_FAILED)
}
