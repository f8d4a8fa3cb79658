//! Counters from etcd's own Prometheus endpoint (`GET <client URL>/metrics`).
//!
//! The bench reads, for etcd 3.4 and 3.5:
//! - `etcd_mvcc_txn_total`: Txn requests applied (each fenced batch of the owner is one);
//! - `etcd_server_proposals_applied_total`: every write through raft (txn, put, delete,
//!   lease grant and revoke);
//! - `etcd_network_client_grpc_received_bytes_total`: bytes clients sent to etcd;
//! - `etcd_disk_wal_fsync_duration_seconds_{sum,count}`: WAL fsyncs, which bound every write;
//! - `process_cpu_seconds_total`: etcd's own CPU time.

use std::collections::HashMap;

use anyhow::{Context, anyhow, bail};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Txn requests applied.
pub const TXNS: &str = "etcd_mvcc_txn_total";
/// Raft proposals applied (all writes).
pub const WRITES: &str = "etcd_server_proposals_applied_total";
/// Bytes received from gRPC clients.
pub const RECEIVED_BYTES: &str = "etcd_network_client_grpc_received_bytes_total";

/// Seconds spent in WAL fsyncs, and their number.
pub const FSYNC_SECONDS: &str = "etcd_disk_wal_fsync_duration_seconds_sum";
/// WAL fsyncs.
pub const FSYNCS: &str = "etcd_disk_wal_fsync_duration_seconds_count";
/// CPU seconds etcd's process has used (user plus system).
pub const CPU_SECONDS: &str = "process_cpu_seconds_total";

/// One reading of etcd's unlabelled metrics.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    values: HashMap<String, f64>,
}

impl Metrics {
    /// How much the counter `name` grew since `before`.
    pub fn since(&self, before: &Metrics, name: &str) -> anyhow::Result<f64> {
        let now = self.values.get(name).ok_or_else(|| anyhow!("etcd exports no {name}"))?;
        Ok(now - before.values.get(name).copied().unwrap_or(0.0))
    }
}

/// Reads `/metrics` from the etcd at `url` (`http://host:port`).
pub async fn scrape(url: &str) -> anyhow::Result<Metrics> {
    let authority = url.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = TcpStream::connect(authority)
        .await
        .with_context(|| format!("cannot reach etcd at {url}"))?;
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {authority}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        bail!("etcd answered /metrics without a body");
    };
    if !head.starts_with("HTTP/1.") || !head.contains(" 200") {
        bail!("etcd answered /metrics with {}", head.lines().next().unwrap_or(""));
    }
    Ok(parse(body))
}

/// Unlabelled samples of a Prometheus text exposition.
fn parse(body: &str) -> Metrics {
    let values = body
        .lines()
        .filter(|line| !line.starts_with('#') && !line.contains('{'))
        .filter_map(|line| {
            let (name, value) = line.split_once(' ')?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect();
    Metrics { values }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_unlabelled_counters() {
        let body = "# HELP x\n# TYPE x counter\netcd_mvcc_txn_total 12\nx{a=\"b\"} 3\n";
        let before = Metrics::default();
        assert_eq!(parse(body).since(&before, TXNS).ok(), Some(12.0));
    }
}
