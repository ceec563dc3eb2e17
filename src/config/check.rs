//! The checks of values that parsed but cannot work, alone or together. Each problem is one line
//! naming its key.

use std::time::Duration;

use super::Config;
use crate::model::{self, Mode};

impl Config {
    /// Every problem of this configuration.
    pub(super) fn problems(&self) -> Vec<String> {
        let mut out = self.aws_problems();
        out.extend(self.product_problems());
        out.extend(self.mode_problems());
        out.extend(self.socket_problems());
        out.extend(self.connection_problems());
        out.extend(self.storage_problems());
        out.extend(self.submit_problems());
        out.extend(self.other_problems());
        out.extend(self.fleet_problems());
        out.extend(self.notification_problems());
        out.extend(self.whole_second_problems());
        out
    }

    /// Settings meterd counts in whole seconds (timestamps, hours, deadlines, leases): a fraction
    /// would be cut without a word, `"500ms"` becoming 0, so it is refused.
    fn whole_second_problems(&self) -> Vec<String> {
        let counted_in_seconds = [
            ("ingest.future_tolerance", Some(self.ingest.future_tolerance)),
            ("submit.seal_delay", Some(self.submit.seal_delay)),
            ("submit.deadline", self.submit.deadline),
            ("storage.retention", Some(self.storage.retention)),
            ("fleet.close_after", Some(self.fleet.close_after)),
            ("fleet.host_timeout", Some(self.fleet.host_timeout)),
            ("fleet.lease_ttl", Some(self.fleet.lease_ttl)),
            ("notifications.wait_time", Some(self.notifications.wait_time)),
            ("notifications.visibility_timeout", Some(self.notifications.visibility_timeout)),
        ];
        let fractional = counted_in_seconds.into_iter().filter_map(|(key, value)| Some((key, value?)));
        fractional
            .filter(|(_, value)| value.subsec_nanos() != 0)
            .map(|(key, value)| {
                let value = crate::duration::format(value);
                format!("{key} ({value}) must be a whole number of seconds: meterd counts it in seconds")
            })
            .collect()
    }

    /// What makes a configuration unable to bill, checked by `run` and `check-config` (the
    /// operator's commands read a configuration without billing anything): an empty
    /// `aws.product_code` bills only events that name a `license_arn`, so it must be declared.
    pub fn check_billing(self) -> Result<Self, super::ConfigError> {
        if !self.aws.product_code.is_empty() || !self.aws.products.is_empty() || self.aws.license_only {
            return Ok(self);
        }
        let problems = vec![
            "aws.product_code is not set, so meterd could bill only events that name a license_arn: set \
             aws.product_code (METERD_AWS__PRODUCT_CODE) to your product's code, or aws.license_only = true \
             if every event names its license_arn. To try meterd without AWS: meterd run --sandbox"
                .into(),
        ];
        Err(super::ConfigError { problems })
    }

    /// `[notifications]`, when the consumer is on: SQS's own limits, and the modes it serves.
    fn notification_problems(&self) -> Vec<String> {
        let n = &self.notifications;
        let mut out = Vec::new();
        if !self.notifications() {
            return out;
        }
        if !(n.queue_url.starts_with("https://") || n.queue_url.starts_with("http://")) {
            out.push(format!("notifications.queue_url {:?} must be the queue's URL (https://sqs.<region>.amazonaws.com/<account>/<name>)", n.queue_url));
        }
        if n.wait_time > Duration::from_secs(20) {
            out.push(format!(
                "notifications.wait_time ({}) must be at most 20s (SQS's longest poll)",
                crate::duration::format(n.wait_time)
            ));
        }
        if !(1..=10).contains(&n.batch_size) {
            out.push(format!("notifications.batch_size {} must be 1 to 10 (SQS's limit)", n.batch_size));
        }
        if n.visibility_timeout < Duration::from_secs(10)
            || n.visibility_timeout > Duration::from_secs(12 * 3600)
        {
            out.push(format!(
                "notifications.visibility_timeout ({}) must be 10s to 12h: long enough to seal and make a flush durable, and within SQS's limit",
                crate::duration::format(n.visibility_timeout)
            ));
        }
        if self.aws.mode == Mode::MeterUsage {
            out.push("notifications.queue_url needs aws.mode = \"batch\": subscription notifications are about SaaS customers, billed with BatchMeterUsage".into());
        }
        if self.fleet() {
            out.push("notifications.queue_url is not supported in fleet mode yet: a notification must act on every host's partials (set it on single-host meterd only)".into());
        }
        out
    }

    /// `[fleet]`, when fleet mode is on.
    fn fleet_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let fleet = &self.fleet;
        if !self.fleet() {
            return out;
        }
        let url = &fleet.database_url;
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            out.push("fleet.database_url must start with postgres:// or postgresql://".into());
        }
        if self.aws.mode == Mode::MeterUsage {
            out.push("fleet mode needs aws.mode = \"batch\": MeterUsage records belong to each instance, task or pod".into());
        }
        let identifier = |s: &str| {
            s.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        if !identifier(&fleet.schema) || fleet.schema.len() > 63 {
            out.push(format!("fleet.schema {:?} must be a lowercase identifier (a-z, 0-9, _)", fleet.schema));
        }
        if fleet.lease_ttl < Duration::from_secs(3) {
            out.push("fleet.lease_ttl must be at least 3s".into());
        }
        if fleet.host_timeout < fleet.lease_ttl {
            out.push("fleet.host_timeout must be at least fleet.lease_ttl".into());
        }
        let room = self.deadline().saturating_sub(Duration::from_secs(3600) + self.submit.seal_delay);
        if fleet.close_after >= room {
            out.push(format!(
                "fleet.close_after ({}) must leave time to submit before submit.deadline ({})",
                crate::duration::format(fleet.close_after),
                crate::duration::format(self.deadline())
            ));
        }
        out
    }

    /// `[aws]` alone.
    fn aws_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let aws = &self.aws;
        if model::service_len(&aws.product_code) > model::MAX_NAME_CHARS
            || !model::is_product_code(&aws.product_code)
        {
            out.push(format!(
                "aws.product_code {:?} does not match {} (at most 255 characters)",
                aws.product_code,
                model::PRODUCT_CODE_PATTERN
            ));
        }
        if aws.license_only && !(aws.product_code.is_empty() && aws.products.is_empty()) {
            out.push(
                "aws.license_only = true needs an empty aws.product_code and no aws.products (every event names its license_arn)"
                    .into(),
            );
        }
        if aws.region.is_empty() {
            out.push("aws.region must not be empty".into());
        }
        let url = &aws.endpoint_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            out.push(format!("aws.endpoint_url {:?} must start with http:// or https://", aws.endpoint_url));
        }
        for dimension in &aws.dimensions {
            if dimension.is_empty() || model::service_len(dimension) > model::MAX_NAME_CHARS {
                out.push(format!("aws.dimensions: {dimension:?} must be 1 to 255 characters"));
            }
        }
        out
    }

    /// `aws.products`: each product's code and dimensions, checked as the shorthand's are, and
    /// not both forms at once.
    fn product_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let aws = &self.aws;
        if aws.products.is_empty() {
            return out;
        }
        if !aws.product_code.is_empty() || !aws.dimensions.is_empty() {
            out.push(
                "aws.products and aws.product_code/aws.dimensions are both set: aws.product_code with \
                 aws.dimensions is the one-product form of aws.products; set one form only (each entry \
                 of aws.products has its own code and dimensions)"
                    .into(),
            );
        }
        for (index, product) in aws.products.iter().enumerate() {
            let code = &product.code;
            if code.is_empty() {
                out.push(format!("aws.products[{index}].code must not be empty"));
            } else if model::service_len(code) > model::MAX_NAME_CHARS || !model::is_product_code(code) {
                out.push(format!(
                    "aws.products[{index}].code {code:?} does not match {} (at most 255 characters)",
                    model::PRODUCT_CODE_PATTERN
                ));
            } else if aws.products[..index].iter().any(|earlier| earlier.code == *code) {
                out.push(format!("aws.products[{index}].code {code:?} is listed twice"));
            }
            for dimension in &product.dimensions {
                if dimension.is_empty() || model::service_len(dimension) > model::MAX_NAME_CHARS {
                    out.push(format!(
                        "aws.products[{index}].dimensions: {dimension:?} must be 1 to 255 characters"
                    ));
                }
            }
        }
        out
    }

    /// The ingest and admin sockets.
    fn socket_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.ingest.socket.as_os_str().is_empty() {
            out.push("ingest.socket must not be empty".into());
        }
        for (key, mode) in
            [("ingest.socket_mode", &self.ingest.socket_mode), ("admin.socket_mode", &self.admin.socket_mode)]
        {
            match u32::from_str_radix(mode, 8) {
                Ok(bits) if bits <= 0o777 => {}
                _ => out.push(format!("{key} {mode:?} must be octal permission bits such as \"0660\"")),
            }
        }
        if !self.ingest.socket_group.is_empty()
            && let Err(err) = crate::unix::resolve_group(&self.ingest.socket_group)
        {
            out.push(format!("ingest.socket_group: {err}"));
        }
        if self.admin.socket.as_os_str().is_empty() {
            out.push("admin.socket must not be empty".into());
        }
        if self.admin.socket == self.ingest.socket {
            out.push("admin.socket must differ from ingest.socket".into());
        }
        out
    }

    /// The listeners' connection limits.
    fn connection_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let caps = [
            ("ingest.max_connections", self.ingest.max_connections),
            ("admin.max_connections", self.admin.max_connections),
            ("metrics.max_connections", self.metrics.max_connections),
        ];
        for (key, cap) in caps {
            if !(1..=1_000_000).contains(&cap) {
                out.push(format!("{key} {cap} must be between 1 and 1000000"));
            }
        }
        let budget = self.ingest.max_pending_reply_bytes;
        if !(64 * 1024..=1 << 30).contains(&budget) {
            out.push(format!("ingest.max_pending_reply_bytes {budget} must be between 65536 and 1073741824"));
        }
        if self.metrics.idle_timeout < Duration::from_secs(1) {
            out.push("metrics.idle_timeout must be at least 1s".into());
        }
        out.extend(self.http_problems());
        out
    }

    /// HTTP ingest, when `ingest.http_listen` is set.
    fn http_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let ingest = &self.ingest;
        if ingest.http_listen.is_empty() {
            return out;
        }
        match self.http_listen() {
            None => out.push(format!(
                "ingest.http_listen {:?} must be an address and port such as \"127.0.0.1:8471\"",
                ingest.http_listen
            )),
            Some(addr) if !addr.ip().is_loopback() && !ingest.http_allow_non_loopback => out.push(format!(
                "ingest.http_listen {addr} is not a loopback address: anyone who reaches it could send \
                 events billed to your customers; use 127.0.0.1 (containers of one ECS task or pod share \
                 it), or set ingest.http_allow_non_loopback = true"
            )),
            Some(_) => {}
        }
        if !(1..=1_000_000).contains(&ingest.http_max_connections) {
            out.push(format!(
                "ingest.http_max_connections {} must be between 1 and 1000000",
                ingest.http_max_connections
            ));
        }
        if !(1024..=64 << 20).contains(&ingest.http_max_body_bytes) {
            out.push(format!(
                "ingest.http_max_body_bytes {} must be between 1024 and 67108864",
                ingest.http_max_body_bytes
            ));
        }
        if ingest.http_idle_timeout < Duration::from_secs(1) {
            out.push("ingest.http_idle_timeout must be at least 1s".into());
        }
        out
    }

    /// `[storage]` and ingest's line limit.
    fn storage_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.storage.retention < Duration::from_secs(86_400) {
            out.push("storage.retention must be at least 1d".into());
        }
        if self.storage.max_bytes < 1 << 20 {
            out.push(format!(
                "storage.max_bytes {} must be at least 1048576 (1 MiB)",
                self.storage.max_bytes
            ));
        }
        let segment = self.storage.journal_segment_size;
        if !(crate::journal::MIN_SEGMENT_BYTES..=1 << 30).contains(&segment) {
            out.push(format!(
                "storage.journal_segment_size {segment} must be between {} (2 MiB) and 1073741824 (1 GiB)",
                crate::journal::MIN_SEGMENT_BYTES
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.ingest.max_line_bytes) {
            out.push(format!(
                "ingest.max_line_bytes {} must be between 1024 and 16777216",
                self.ingest.max_line_bytes
            ));
        }
        if self.storage.data_dir.as_os_str().is_empty() {
            out.push("storage.data_dir must not be empty".into());
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&self.storage.checkpoint_interval)
        {
            out.push("storage.checkpoint_interval must be between 10ms and 60s".into());
        }
        out
    }

    /// `[submit]`.
    fn submit_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let submit = &self.submit;
        let (deadline, max) = (self.deadline(), self.max_deadline());
        if deadline > max {
            out.push(format!(
                "submit.deadline must be at most {}, the longest window the service allows for {}",
                crate::duration::format(max),
                if self.aws.mode == Mode::Batch { "BatchMeterUsage" } else { "MeterUsage" }
            ));
        }
        if submit.seal_delay + Duration::from_secs(3600) >= deadline {
            out.push(format!(
                "submit.deadline ({}) must be longer than one hour plus submit.seal_delay ({}), or no record could be sent in time",
                crate::duration::format(deadline),
                crate::duration::format(submit.seal_delay)
            ));
        }
        if !(submit.max_requests_per_second > 0.0 && submit.max_requests_per_second <= 10.0) {
            out.push(format!(
                "submit.max_requests_per_second {} must be above 0 and at most 10 (the service's quota per account)",
                submit.max_requests_per_second
            ));
        }
        if submit.request_timeout.is_zero() {
            out.push("submit.request_timeout must be above 0".into());
        }
        if submit.backoff_base.is_zero() || submit.backoff_base > submit.backoff_max {
            out.push("submit.backoff_base must be above 0 and at most submit.backoff_max".into());
        }
        if submit.subscription_recheck < Duration::from_secs(1) {
            out.push("submit.subscription_recheck must be at least 1s".into());
        }
        if submit.pause.is_zero() {
            out.push("submit.pause must be above 0".into());
        }
        out
    }

    /// `[log]` and `[shutdown]`.
    fn other_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            out.push(format!("log.level {:?} is not a valid filter", self.log.level));
        }
        if self.shutdown.grace < Duration::from_secs(1) {
            out.push("shutdown.grace must be at least 1s".into());
        }
        out
    }

    /// The settings of `meter_usage` mode, heartbeats and RegisterUsage, which depend on each other.
    fn mode_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let aws = &self.aws;
        let metered = aws.mode == Mode::MeterUsage;
        let single = aws.single_product();
        let several = aws.products.len();
        if metered && single.is_none() {
            out.push(format!(
                "aws.mode = \"meter_usage\" bills one product (MeterUsage names the product of this instance, \
                 task or pod), but aws.products lists {several}: run one meterd per product"
            ));
        } else if metered && single.as_deref() == Some("") {
            out.push(
                "aws.product_code is required when aws.mode = \"meter_usage\" (MeterUsage names the product)"
                    .into(),
            );
        }
        if aws.register_usage && single.is_none() {
            out.push(format!(
                "aws.register_usage = true needs one product (RegisterUsage names one product code), but \
                 aws.products lists {several}"
            ));
        } else if aws.register_usage && single.as_deref() == Some("") {
            out.push("aws.product_code is required when aws.register_usage = true".into());
        }
        if aws.public_key_version < 1 {
            out.push(format!("aws.public_key_version {} must be at least 1", aws.public_key_version));
        }
        if model::service_len(&aws.nonce) > model::MAX_NAME_CHARS {
            out.push("aws.nonce must be at most 255 characters".into());
        }
        let heartbeat = &self.submit.heartbeat_dimensions;
        let allowed = aws.products().swap_remove(0).dimensions;
        if !heartbeat.is_empty() && !metered {
            out.push(
                "submit.heartbeat_dimensions needs aws.mode = \"meter_usage\": in batch mode a 0-quantity record would take the hour's only slot for a customer".into(),
            );
        }
        for dimension in heartbeat {
            if dimension.is_empty() || model::service_len(dimension) > model::MAX_NAME_CHARS {
                out.push(format!("submit.heartbeat_dimensions: {dimension:?} must be 1 to 255 characters"));
            } else if !allowed.is_empty() && !allowed.contains(dimension) {
                out.push(format!("submit.heartbeat_dimensions: {dimension:?} is not in aws.dimensions"));
            }
        }
        out
    }
}
