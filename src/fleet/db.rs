//! The connection to PostgreSQL and the schema meterd keeps there.
//!
//! TLS follows libpq's `sslmode` in the URL: `disable`; `prefer` and `require` encrypt without
//! checking the certificate (as libpq does); `verify-ca` checks the chain against
//! `fleet.ca_file` (or the system's roots); `verify-full` checks the host name too. RDS and Aurora
//! want `verify-full` with the region's CA bundle as `fleet.ca_file`. The password comes from the
//! URL, `fleet.password_file` or `PGPASSWORD`, so that it need not be in a unit file.
//!
//! ## Schema (in `fleet.schema`, created and migrated by meterd at start)
//!
//! | table | one row per | written by |
//! |---|---|---|
//! | `migrations` | applied schema version | whoever starts first (under an advisory lock) |
//! | `hosts` | fleet host: first seen, heartbeat, highest hour sealed and shipped, deregistered | each host |
//! | `hours` | hour that has partials: `open`, then `closed` with the closing epoch | hosts insert, the lease holder closes |
//! | `partials` | (host, partial id, tag set): a host's sealed hourly usage, with the partial's digest and generation (0, or the host's n-th later partial of a key it sealed early in the hour) | each host's ship stage |
//! | `late_partials` | partial that arrived after its hour closed: carried (to which hour) or a dead letter | ship stage |
//! | `records` | fleet record (sum of an hour's partials): the postcard bytes sent, its state and receipt | the lease holder |
//! | `lease` | `submitter`: holder, fencing epoch, expiry | every host (conditional UPDATE) |
//! | `dead_letter_actions` | retry or drop of a fleet dead letter: what, by which host and uid, when, under which lease epoch (`dlq.rs`) | the host the operator's command ran on |
//!
//! Times are epoch seconds by the hosts' clocks (the same clock that decides hours and deadlines).

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};

use crate::model::{Customer, RecordKey, Scope};

/// The schema versions, in order; each runs once, in one transaction. A migration only adds
/// (columns with defaults, tables), so that a host still running the meterd before it keeps
/// working beside the hosts that applied it (a rolling upgrade): it applies none it does not know.
///
/// | version | adds |
/// |---|---|
/// | 1 | every table |
/// | 2 | `generation` of `partials` and `late_partials`: a host's later partials of a key and hour it sealed early |
/// | 3 | `dead_letter_actions`: operators' retries and drops of fleet dead letters |
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE hosts (
    host_id text PRIMARY KEY,
    first_seen bigint NOT NULL,
    heartbeat bigint NOT NULL,
    shipped_through bigint,
    deregistered_at bigint
);
CREATE TABLE hours (
    hour bigint PRIMARY KEY,
    state text NOT NULL DEFAULT 'open',
    closed_at bigint,
    closed_epoch bigint
);
CREATE TABLE partials (
    host_id text NOT NULL,
    partial_id text NOT NULL,
    tags text NOT NULL,
    scope_kind text NOT NULL,
    scope text NOT NULL,
    customer_kind text NOT NULL,
    customer text NOT NULL,
    dimension text NOT NULL,
    hour bigint NOT NULL,
    quantity bigint NOT NULL,
    digest bigint NOT NULL,
    PRIMARY KEY (host_id, partial_id, tags)
);
CREATE INDEX partials_by_hour ON partials (hour);
CREATE INDEX partials_by_id ON partials (partial_id);
CREATE TABLE late_partials (
    host_id text NOT NULL,
    partial_id text NOT NULL,
    hour bigint NOT NULL,
    quantity bigint NOT NULL,
    digest bigint NOT NULL,
    carried_to bigint,
    reason text,
    noted_at bigint NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (host_id, partial_id)
);
CREATE INDEX late_partials_by_id ON late_partials (partial_id);
CREATE TABLE records (
    scope_kind text NOT NULL,
    scope text NOT NULL,
    customer_kind text NOT NULL,
    customer text NOT NULL,
    dimension text NOT NULL,
    hour bigint NOT NULL,
    quantity bigint NOT NULL,
    record bytea NOT NULL,
    state text NOT NULL,
    metering_record_id text,
    dead_reason text,
    message text,
    sealed_at bigint NOT NULL,
    settled_at bigint,
    epoch bigint NOT NULL,
    PRIMARY KEY (scope_kind, scope, customer_kind, customer, dimension, hour)
);
CREATE INDEX records_pending ON records (hour) WHERE state = 'pending';
CREATE TABLE lease (
    name text PRIMARY KEY,
    holder text NOT NULL,
    epoch bigint NOT NULL,
    expires_at bigint NOT NULL
);
INSERT INTO lease VALUES ('submitter', '', 0, 0);
"#,
    r#"
ALTER TABLE partials ADD COLUMN generation integer NOT NULL DEFAULT 0;
ALTER TABLE late_partials ADD COLUMN generation integer NOT NULL DEFAULT 0;
"#,
    r#"
CREATE TABLE dead_letter_actions (
    id bigserial PRIMARY KEY,
    action text NOT NULL,
    kind text NOT NULL,
    scope_kind text NOT NULL,
    scope text NOT NULL,
    customer_kind text NOT NULL,
    customer text NOT NULL,
    dimension text NOT NULL,
    hour bigint NOT NULL,
    quantity bigint NOT NULL,
    reason text NOT NULL,
    message text,
    record bytea NOT NULL,
    partial_host text,
    partial_id text,
    carried_to bigint,
    by_host text NOT NULL,
    by_uid bigint,
    at bigint NOT NULL,
    epoch bigint NOT NULL
);
"#,
];

/// Fleet database failures.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("fleet.database_url is not a PostgreSQL URL: {0}")]
    Url(String),
    #[error("cannot read {path}: {source}")]
    File { path: String, source: std::io::Error },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("no answer from PostgreSQL in time")]
    TimedOut,
}

/// How to reach the fleet database.
#[derive(Clone)]
pub struct Target {
    config: tokio_postgres::Config,
    tls: Option<Arc<rustls::ClientConfig>>,
    pub schema: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("schema", &self.schema).finish_non_exhaustive()
    }
}

/// libpq's sslmode, which tokio-postgres only knows up to `require`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    Nothing,
    Chain,
    Full,
}

impl Target {
    /// Reads `url` (with libpq's `sslmode`), the password file and the CA file.
    pub fn new(url: &str, password_file: &Path, ca_file: &Path, schema: &str) -> Result<Self, DbError> {
        let (url, verify) = strip_verify_mode(url);
        let mut config = tokio_postgres::Config::from_str(&url).map_err(|e| DbError::Url(e.to_string()))?;
        if config.get_password().is_none() {
            let password = if password_file.as_os_str().is_empty() {
                std::env::var("PGPASSWORD").ok()
            } else {
                let text = std::fs::read_to_string(password_file)
                    .map_err(|source| DbError::File { path: password_file.display().to_string(), source })?;
                Some(text.trim_end_matches(['\n', '\r']).to_string())
            };
            if let Some(password) = password {
                config.password(password);
            }
        }
        let tls = match (config.get_ssl_mode(), verify) {
            (SslMode::Disable, _) => None,
            (_, verify) => Some(Arc::new(tls_config(verify, ca_file)?)),
        };
        if verify != Verify::Nothing {
            config.ssl_mode(SslMode::Require);
        }
        Ok(Self { config, tls, schema: schema.to_string() })
    }

    /// A new connection; its driver runs on the runtime until the client is dropped.
    pub async fn connect(&self) -> Result<Client, DbError> {
        // The connection's driver ends when the client is dropped (or the server goes away).
        let client = match &self.tls {
            None => {
                let (client, connection) = self.config.connect(NoTls).await?;
                tokio::spawn(connection);
                client
            }
            Some(tls) => {
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone());
                let (client, connection) = self.config.connect(tls).await?;
                tokio::spawn(connection);
                client
            }
        };
        client.batch_execute(&format!("SET search_path TO {}", quote_ident(&self.schema))).await?;
        Ok(client)
    }

    /// Creates the schema and applies the migrations this meterd knows; several hosts starting at
    /// once serialize on an advisory lock. Returns the schema version.
    pub async fn migrate(&self) -> Result<usize, DbError> {
        let mut client = self.connect().await?;
        let schema = quote_ident(&self.schema);
        let tx = client.transaction().await?;
        // One lock per schema name, for this transaction only.
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&format!("meterd:{}", self.schema)])
            .await?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.migrations (version int PRIMARY KEY, applied_at bigint NOT NULL)"
        ))
        .await?;
        let applied: i32 = tx
            .query_one(&format!("SELECT coalesce(max(version), 0) FROM {schema}.migrations"), &[])
            .await?
            .get(0);
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
            tx.batch_execute(&format!("SET LOCAL search_path TO {schema}; {sql}")).await?;
            let version = index as i32 + 1;
            let now = crate::clock::Clock::default().now();
            tx.execute(&format!("INSERT INTO {schema}.migrations VALUES ($1, $2)"), &[&version, &now])
                .await?;
            tracing::info!(schema = %self.schema, version, "fleet schema migrated");
        }
        tx.commit().await?;
        Ok(MIGRATIONS.len())
    }
}

/// Removes `sslmode=verify-ca|verify-full` (which tokio-postgres does not parse) from a URL.
fn strip_verify_mode(url: &str) -> (String, Verify) {
    let Some((base, query)) = url.split_once('?') else { return (url.to_string(), Verify::Nothing) };
    let mut verify = Verify::Nothing;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match *pair {
            "sslmode=verify-full" => {
                verify = Verify::Full;
                false
            }
            "sslmode=verify-ca" => {
                verify = Verify::Chain;
                false
            }
            _ => true,
        })
        .collect();
    let url = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
    (url, verify)
}

fn tls_config(verify: Verify, ca_file: &Path) -> Result<rustls::ClientConfig, DbError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| DbError::Tls(e.to_string()))?;
    if verify == Verify::Nothing {
        let verifier = Arc::new(tls::Lenient { provider, chain: None });
        return Ok(builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    if ca_file.as_os_str().is_empty() {
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
    } else {
        let certs = CertificateDer::pem_file_iter(ca_file)
            .map_err(|e| DbError::Tls(format!("{}: {e}", ca_file.display())))?;
        for cert in certs {
            roots
                .add(cert.map_err(|e| DbError::Tls(e.to_string()))?)
                .map_err(|e| DbError::Tls(e.to_string()))?;
        }
    }
    let roots = Arc::new(roots);
    if verify == Verify::Chain {
        let chain = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| DbError::Tls(e.to_string()))?;
        let verifier = Arc::new(tls::Lenient { provider, chain: Some(chain) });
        return Ok(builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth());
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// `"name"` with inner quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// How a record key is spelled in the tables: scope kind and value, customer kind and value.
pub fn key_columns(key: &RecordKey) -> (&'static str, &str, &'static str, &str) {
    let (scope_kind, scope) = match &key.scope {
        Scope::ProductCode(code) => ("product", code.as_str()),
        Scope::LicenseArn(arn) => ("license", arn.as_str()),
    };
    let (customer_kind, customer) = match &key.customer {
        Customer::AwsAccountId(id) => ("account", id.as_str()),
        Customer::Identifier(id) => ("identifier", id.as_str()),
        Customer::Caller => ("caller", ""),
    };
    (scope_kind, scope, customer_kind, customer)
}

/// The record key of a row's columns.
pub fn key_of(
    scope_kind: &str,
    scope: String,
    customer_kind: &str,
    customer: String,
    dimension: String,
    hour: i64,
) -> RecordKey {
    let scope = if scope_kind == "license" { Scope::LicenseArn(scope) } else { Scope::ProductCode(scope) };
    let customer = match customer_kind {
        "account" => Customer::AwsAccountId(customer),
        "identifier" => Customer::Identifier(customer),
        _ => Customer::Caller,
    };
    RecordKey { scope, customer, dimension, hour }
}

/// Certificate checks weaker than rustls's default, for libpq's `require` and `verify-ca`.
mod tls {
    use std::sync::Arc;

    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};

    /// `sslmode=require` (`chain: None`): encrypted, certificate not checked, as libpq does.
    /// `sslmode=verify-ca` (`chain: Some`): the chain is checked, the host name is not.
    #[derive(Debug)]
    pub struct Lenient {
        pub provider: Arc<CryptoProvider>,
        pub chain: Option<Arc<WebPkiServerVerifier>>,
    }

    impl ServerCertVerifier for Lenient {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            let Some(chain) = &self.chain else { return Ok(ServerCertVerified::assertion()) };
            match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
                Err(Error::InvalidCertificate(
                    CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                other => other,
            }
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider.signature_verification_algorithms.supported_schemes()
        }
    }
}
