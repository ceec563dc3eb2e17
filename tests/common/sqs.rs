//! A real SQS wire protocol for the notification consumer's tests: moto's server (PyPI
//! `moto[server]`, installed into `.venv` by scripts/setup.sh), started on 127.0.0.1 at a free
//! port like tests/common/pg.rs starts PostgreSQL, and stopped on drop. Tests talk to it with
//! aws-sdk-sqs, as meterd does.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};

pub struct Sqs {
    child: Child,
    pub url: String,
    runtime: tokio::runtime::Runtime,
    pub client: aws_sdk_sqs::Client,
}

/// moto's server in the project's venv; `None` (the test then says why it skips) without it.
pub fn moto_server() -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
    if path.exists() {
        Some(path)
    } else {
        eprintln!("SKIPPED: {} is missing; run scripts/setup.sh to install moto[server]", path.display());
        None
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Sqs {
    /// Starts moto's server, or `None` when the venv lacks it.
    pub fn start() -> Option<Sqs> {
        let program = moto_server()?;
        let port = free_port();
        let child = Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let url = format!("http://127.0.0.1:{port}");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("AKIDMOTO", "moto-secret", None, None, "test"))
            .endpoint_url(&url)
            .build();
        let sqs = Sqs { child, url, runtime, client: aws_sdk_sqs::Client::from_conf(config) };
        super::wait_until("moto's server answers", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Some(sqs)
    }

    /// A new queue; returns its URL.
    pub fn queue(&self, name: &str) -> String {
        let created = self.runtime.block_on(self.client.create_queue().queue_name(name).send()).unwrap();
        created.queue_url.unwrap()
    }

    /// Sends one message body; returns its SQS message id.
    pub fn send(&self, queue: &str, body: &str) -> String {
        let sent = self
            .runtime
            .block_on(self.client.send_message().queue_url(queue).message_body(body).send())
            .unwrap();
        sent.message_id.unwrap()
    }

    /// Messages in the queue, visible and in flight.
    pub fn depth(&self, queue: &str) -> (u64, u64) {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let answer = self.runtime.block_on(
            self.client
                .get_queue_attributes()
                .queue_url(queue)
                .attribute_names(A::ApproximateNumberOfMessages)
                .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
                .send(),
        );
        let attributes = answer.unwrap().attributes.unwrap_or_default();
        let get = |name: &A| attributes.get(name).and_then(|v| v.parse().ok()).unwrap_or(0);
        (get(&A::ApproximateNumberOfMessages), get(&A::ApproximateNumberOfMessagesNotVisible))
    }
}

impl Drop for Sqs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
