//! The queue behind a seam: [`Queue`] receives and deletes; [`SqsQueue`] is SQS through
//! aws-sdk-sqs, on aws-config's default credential chain (the one the metering client uses).

use std::future::Future;
use std::time::Duration;

use aws_sdk_sqs as sqs;
use sqs::types::MessageSystemAttributeName;

/// One received message.
#[derive(Debug, Clone)]
pub struct Received {
    /// SQS's message id.
    pub id: String,
    /// The handle that deletes it.
    pub receipt: String,
    pub body: String,
    /// When SQS took it (`SentTimestamp`), epoch milliseconds.
    pub sent_at_ms: Option<i64>,
}

/// A failed queue call, in words for the log and `meterd status`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct QueueError(pub String);

/// Where notifications come from.
pub trait Queue: Send + Sync + 'static {
    /// Waits (long polling) for up to a batch of messages; may return none.
    fn receive(&self) -> impl Future<Output = Result<Vec<Received>, QueueError>> + Send;
    /// Deletes a message, so that it is not delivered again.
    fn delete(&self, receipt: &str) -> impl Future<Output = Result<(), QueueError>> + Send;
}

/// How the consumer polls.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub queue_url: String,
    pub region: String,
    pub endpoint_url: Option<String>,
    pub wait_time: Duration,
    pub batch_size: i32,
    pub visibility_timeout: Duration,
}

/// SQS through the SDK. The SDK's own retries stay on (standard mode): a receive that fails
/// after them is the consumer's to back off.
pub struct SqsQueue {
    client: sqs::Client,
    settings: QueueSettings,
}

impl SqsQueue {
    pub async fn new(settings: QueueSettings) -> Self {
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(settings.region.clone()))
            .load()
            .await;
        let mut builder = sqs::config::Builder::from(&shared).timeout_config(
            sqs::config::timeout::TimeoutConfig::builder()
                // A long poll holds the request open for wait_time.
                .operation_attempt_timeout(settings.wait_time + Duration::from_secs(10))
                .build(),
        );
        if let Some(url) = &settings.endpoint_url {
            builder = builder.endpoint_url(url);
        }
        Self { client: sqs::Client::from_conf(builder.build()), settings }
    }
}

/// The SDK's error as one line: the service's code and message when it answered.
fn describe<E: sqs::error::ProvideErrorMetadata + std::error::Error + 'static>(
    err: &sqs::error::SdkError<E>,
) -> String {
    match err.as_service_error() {
        Some(service) => {
            format!("{}: {}", service.code().unwrap_or("error"), service.message().unwrap_or("no message"))
        }
        None => chain(err),
    }
}

/// An error and its causes, one after the other (a dispatch failure says little on its own).
fn chain<E: std::error::Error + 'static>(err: &sqs::error::SdkError<E>) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

impl Queue for SqsQueue {
    async fn receive(&self) -> Result<Vec<Received>, QueueError> {
        let s = &self.settings;
        let answer = self
            .client
            .receive_message()
            .queue_url(&s.queue_url)
            .max_number_of_messages(s.batch_size)
            .wait_time_seconds(s.wait_time.as_secs() as i32)
            .visibility_timeout(s.visibility_timeout.as_secs() as i32)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await
            .map_err(|err| QueueError(describe(&err)))?;
        let messages = answer.messages.unwrap_or_default().into_iter().map(|m| Received {
            sent_at_ms: m
                .attributes
                .as_ref()
                .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                .and_then(|t| t.parse().ok()),
            id: m.message_id.unwrap_or_default(),
            receipt: m.receipt_handle.unwrap_or_default(),
            body: m.body.unwrap_or_default(),
        });
        Ok(messages.collect())
    }

    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        self.client
            .delete_message()
            .queue_url(&self.settings.queue_url)
            .receipt_handle(receipt)
            .send()
            .await
            .map(|_| ())
            .map_err(|err| QueueError(describe(&err)))
    }
}
