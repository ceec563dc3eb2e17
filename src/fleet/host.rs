//! Which fleet host this is: `fleet.host_id`, or derived from where meterd runs. It must be
//! stable across restarts of the same host and unique across the fleet.
//!
//! | where | host id |
//! |---|---|
//! | ECS (`ECS_CONTAINER_METADATA_URI_V4`) | `ecs:` + the task ARN from the task metadata endpoint |
//! | Kubernetes (`KUBERNETES_SERVICE_HOST`) | `k8s:` + `POD_NAMESPACE/` (downward API, if set) + `POD_NAME` or `HOSTNAME` |
//! | anywhere else | `machine:` + `/etc/machine-id` |
//!
//! Two meterds on one machine (two data dirs) must be given their own `fleet.host_id`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The configured id, or one derived from the environment.
pub async fn host_id(configured: &str) -> Result<String, String> {
    if !configured.is_empty() {
        return Ok(configured.to_string());
    }
    if let Ok(uri) = std::env::var("ECS_CONTAINER_METADATA_URI_V4") {
        return ecs_task_arn(&uri).await.map(|arn| format!("ecs:{arn}"));
    }
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        let pod = std::env::var("POD_NAME").or_else(|_| std::env::var("HOSTNAME"));
        let pod =
            pod.map_err(|_| "in Kubernetes without POD_NAME or HOSTNAME: set fleet.host_id".to_string())?;
        return Ok(match std::env::var("POD_NAMESPACE") {
            Ok(namespace) => format!("k8s:{namespace}/{pod}"),
            Err(_) => format!("k8s:{pod}"),
        });
    }
    let id = std::fs::read_to_string("/etc/machine-id")
        .map_err(|e| format!("cannot read /etc/machine-id ({e}): set fleet.host_id"))?;
    Ok(format!("machine:{}", id.trim()))
}

/// `TaskARN` from `GET {uri}/task` (plain HTTP on a link-local address).
async fn ecs_task_arn(uri: &str) -> Result<String, String> {
    let fail = |what: String| format!("ECS task metadata at {uri}: {what}; set fleet.host_id");
    let rest = uri.strip_prefix("http://").ok_or_else(|| fail("not an http:// URI".into()))?;
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let request = format!("GET /{path}/task HTTP/1.0\r\nHost: {authority}\r\n\r\n");
    let body = tokio::time::timeout(Duration::from_secs(5), async {
        let mut stream = tokio::net::TcpStream::connect(authority).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.take(1 << 20).read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    })
    .await
    .map_err(|_| fail("no answer in 5s".into()))?
    .map_err(|e| fail(e.to_string()))?;
    let text = String::from_utf8_lossy(&body);
    let json = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| fail(e.to_string()))?;
    value["TaskARN"].as_str().map(str::to_string).ok_or_else(|| fail("no TaskARN".into()))
}
