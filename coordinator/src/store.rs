//! etcd access: protobuf values, create-if-absent and guarded writes, with call timeouts,
//! over a channel that keeps to live etcd members ([`failover`]).

pub(crate) mod batch;
pub(crate) mod deflated;
pub(crate) mod failover;

use std::{sync::Arc, time::Duration};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, KvClient, ResponseHeader,
    Txn, TxnOp, TxnOpResponse, WatchClient,
};
use prost::Message;
use sluice_proto::ids::Epoch;
use tonic::Code;

use sluice_proto::security::tls::{TlsError, check_url, client_config};

use self::{
    batch::{Batcher, Guarded, GuardedWrite},
    failover::Failover,
};
use crate::{
    error::{Error, Result},
    keys::Keys,
    metrics::{Metrics, TimedChannel},
    settings::EtcdTls,
};

/// A cheap-to-clone handle on etcd and the key layout: one `Arc`, because every session
/// flush and etcd call clones it, and the etcd client's dozen service clients are not cheap
/// to clone.
#[derive(Clone)]
pub(crate) struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    kv: KvClient,
    watcher: WatchClient,
    failover: Failover,
    keys: Keys,
    batcher: Batcher,
}

/// Reads per txn of `get_many`: below etcd's default `--max-txn-ops` of 128.
const MAX_READS_PER_TXN: usize = 100;

/// Largest etcd response the coordinator reads (a 100,000-item job is several MiB).
const MAX_ETCD_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// A decoded value with the revisions that fence later writes.
#[derive(Debug, Clone)]
pub(crate) struct Versioned<M> {
    /// The value.
    pub(crate) value: M,
    /// Revision of the key's last change.
    pub(crate) mod_revision: i64,
    /// Revision that created the key (a key deleted and written again has a new one).
    pub(crate) create_revision: i64,
    /// Lease the key is bound to (0 = none).
    pub(crate) lease: i64,
}

impl<M> Versioned<M> {
    /// `value` with the revisions and lease of the key it was read from.
    pub(crate) fn of(value: M, kv: &KeyValue) -> Self {
        Versioned {
            value,
            mod_revision: kv.mod_revision(),
            create_revision: kv.create_revision(),
            lease: kv.lease(),
        }
    }
}

impl Store {
    /// Connects lazily: a coordinator starts (and keeps serving) while etcd is down. Every
    /// request is timed into `metrics`.
    pub(crate) async fn connect(
        endpoints: &[String],
        prefix: &str,
        timeout: Duration,
        metrics: &Metrics,
        tls: Option<&EtcdTls>,
    ) -> Result<Self> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            .with_keep_alive(Duration::from_secs(5), timeout)
            // A member cut off from the others answers UNAVAILABLE at once instead of hanging,
            // so the channel moves to another member.
            .with_require_leader(true);
        if tls.is_none()
            && let Some(endpoint) = endpoints.iter().find(|e| e.starts_with("https://"))
        {
            let reason = format!("etcd endpoint {endpoint} needs --etcd-ca to verify etcd");
            return Err(Error::Tls(TlsError::Flags(reason)));
        }
        if let Some(tls) = tls {
            for endpoint in endpoints {
                check_url("etcd endpoint", endpoint, true).map_err(Error::Tls)?;
            }
            let identity = tls.identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
            options = options.with_tls(client_config(&tls.ca, identity).map_err(Error::Tls)?);
        }
        let (failover, updater) = Failover::new(64, timeout);
        let channel = TimedChannel(metrics.clone(), failover.clone(), updater);
        let client =
            Client::connect_with_balanced_channel(endpoints, Some(options), channel).await?;
        let kv = client
            .kv_client()
            .max_decoding_message_size(MAX_ETCD_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_ETCD_MESSAGE_BYTES);
        let watcher = client.watch_client().max_decoding_message_size(MAX_ETCD_MESSAGE_BYTES);
        let batcher = Batcher::start(kv.clone());
        let inner = Inner { client, kv, watcher, failover, keys: Keys::new(prefix), batcher };
        Ok(Store { inner: Arc::new(inner) })
    }

    /// Tells the channel that the lease keep-alive stream went silent: its member is passed
    /// over, so the next stream opens on another one.
    pub(crate) fn keep_alive_stalled(&self) {
        self.inner.failover.keep_alive_stalled();
    }

    /// The key layout.
    pub(crate) fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// A clone of the raw client, for leases.
    pub(crate) fn client(&self) -> Client {
        self.inner.client.clone()
    }

    /// The key-value client, with message limits that fit the largest jobs.
    pub(crate) fn kv(&self) -> KvClient {
        self.inner.kv.clone()
    }

    /// Writes `write` while its guard key's mod revision is as expected, in one txn with
    /// the guarded writes of other sessions waiting at the same time ([`batch`]).
    pub(crate) async fn guarded(&self, write: GuardedWrite) -> Result<Guarded> {
        self.inner.batcher.write(write).await
    }

    /// The watch client, with the same limits.
    pub(crate) fn watcher(&self) -> WatchClient {
        self.inner.watcher.clone()
    }

    /// Whether `key` exists (a count, not its value: a job's is several MiB when large).
    pub(crate) async fn exists(&self, key: &str) -> Result<bool> {
        let options = GetOptions::new().with_count_only();
        Ok(self.kv().get(key, Some(options)).await?.count() > 0)
    }

    /// Reads and decodes one key; a deflated value (a job of about 1,000 items or more) is
    /// inflated and decoded off the runtime.
    pub(crate) async fn get<M: Message + Default + Send + 'static>(
        &self,
        key: &str,
    ) -> Result<Option<Versioned<M>>> {
        let mut response = self.kv().get(key, None).await?;
        let Some(kv) = response.take_kvs().into_iter().next() else {
            return Ok(None);
        };
        if !deflated::is_deflated(kv.value()) {
            return decode_kv(&kv).map(Some);
        }
        off_runtime(move || decode_kv(&kv)).await.map(Some)
    }

    /// Reads and decodes every key under a prefix, in key order.
    pub(crate) async fn list<M: Message + Default>(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, M)>> {
        let options = GetOptions::new().with_prefix();
        let response = self.kv().get(prefix, Some(options)).await?;
        response
            .kvs()
            .iter()
            .map(|kv| Ok((String::from_utf8_lossy(kv.key()).into_owned(), decode_kv(kv)?.value)))
            .collect()
    }

    /// Reads and decodes every key under a prefix, in the order etcd created the keys (their
    /// create revisions: commit order, whatever the clocks of those who wrote them say).
    pub(crate) async fn list_in_commit_order<M: Message + Default>(
        &self,
        prefix: &str,
    ) -> Result<Vec<M>> {
        let listed = self.list_versioned_in_commit_order(prefix).await?;
        Ok(listed.into_iter().map(|versioned| versioned.value).collect())
    }

    /// [`Self::list_in_commit_order`] with each value's revisions.
    pub(crate) async fn list_versioned_in_commit_order<M: Message + Default>(
        &self,
        prefix: &str,
    ) -> Result<Vec<Versioned<M>>> {
        let options = GetOptions::new().with_prefix();
        let response = self.kv().get(prefix, Some(options)).await?;
        in_commit_order(response.kvs())
    }

    /// The revision that created `key` (its value is not read; 0 when it is absent),
    /// [`Self::list_versioned_in_commit_order`] of `prefix`, and the names of the keys under
    /// `names_under` (the part after it; values not read), read at one revision in one request.
    pub(crate) async fn created_listed_and_named<M: Message + Default>(
        &self,
        key: &str,
        prefix: &str,
        names_under: &str,
    ) -> Result<(i64, Vec<Versioned<M>>, Vec<String>)> {
        let reads = [
            TxnOp::get(key, Some(GetOptions::new().with_keys_only())),
            TxnOp::get(prefix, Some(GetOptions::new().with_prefix())),
            TxnOp::get(names_under, Some(GetOptions::new().with_prefix().with_keys_only())),
        ];
        let response = self.kv().txn(Txn::new().and_then(reads)).await?;
        let mut gets = response.op_responses().into_iter().filter_map(|op| match op {
            TxnOpResponse::Get(get) => Some(get),
            _ => None,
        });
        let created = gets.next().and_then(|get| get.kvs().first().map(KeyValue::create_revision));
        let listed =
            gets.next().map_or_else(|| Ok(Vec::new()), |get| in_commit_order(get.kvs()))?;
        let names = gets.next().map_or_else(Vec::new, |get| {
            let names = get.kvs().iter().map(|kv| String::from_utf8_lossy(kv.key()).into_owned());
            names.filter_map(|key| key.strip_prefix(names_under).map(str::to_owned)).collect()
        });
        Ok((created.unwrap_or(0), listed, names))
    }

    /// Reads many single keys in as few requests as etcd's op limit allows (one txn of reads
    /// per `MAX_READS_PER_TXN`, all at one revision each); `None` for a key that is absent.
    pub(crate) async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<KeyValue>>> {
        let mut found = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(MAX_READS_PER_TXN) {
            let reads = chunk.iter().map(|key| TxnOp::get(key.as_str(), None));
            let response = self.kv().txn(Txn::new().and_then(reads.collect::<Vec<_>>())).await?;
            for op in response.op_responses() {
                let kv = match op {
                    TxnOpResponse::Get(get) => get.kvs().first().cloned(),
                    _ => None,
                };
                found.push(kv);
            }
        }
        Ok(found)
    }

    /// Reads the raw keys and values under a prefix.
    pub(crate) async fn list_raw(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let options = GetOptions::new().with_prefix();
        let response = self.kv().get(prefix, Some(options)).await?;
        Ok(response
            .kvs()
            .iter()
            .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.value().to_vec()))
            .collect())
    }

    /// Writes a key unconditionally, optionally bound to a lease (tests' set-up).
    #[cfg(test)]
    pub(crate) async fn put<M: Message>(
        &self,
        key: &str,
        value: &M,
        lease: Option<i64>,
    ) -> Result<()> {
        let options = lease.map(|id| etcd_client::PutOptions::new().with_lease(id));
        self.kv().put(key, value.encode_to_vec(), options).await?;
        Ok(())
    }

    /// Renews a lease once; `false` when it has expired. Opening a keep-alive stream sends
    /// one renewal and reads its answer (etcd-client does both before it returns the
    /// stream), which is all one renewal needs: the stream is dropped unused.
    pub(crate) async fn renew_lease(&self, lease: i64) -> Result<bool> {
        match self.client().lease_keep_alive(lease).await {
            Ok(_) => Ok(true),
            // etcd answers an expired lease with TTL 0, which etcd-client turns into this
            // variant (its only other use is a failed send on the channel it just made).
            Err(etcd_client::Error::LeaseKeepAliveError(_)) => Ok(false),
            Err(etcd_client::Error::GRpcStatus(status)) if status.code() == Code::NotFound => {
                Ok(false)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Compacts etcd's history up to `revision`; `false` when it was compacted that far
    /// already (etcd answers OUT_OF_RANGE).
    pub(crate) async fn compact(&self, revision: i64) -> Result<bool> {
        match self.kv().compact(revision, None).await {
            Ok(_) => Ok(true),
            Err(etcd_client::Error::GRpcStatus(status)) if status.code() == Code::OutOfRange => {
                Ok(false)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Runs a transaction; `Ok(None)` when its guards did not hold, else the responses.
    pub(crate) async fn txn(&self, txn: Txn) -> Result<Option<Vec<TxnOpResponse>>> {
        let response = self.kv().txn(txn).await?;
        Ok(response.succeeded().then(|| response.op_responses()))
    }
}

/// The epoch an owner-key write made: the revision of etcd's answer. etcd always sends one; an
/// answer without it is an error, never epoch 0.
pub(crate) fn epoch_of(header: Option<&ResponseHeader>) -> Result<Epoch> {
    let revision = header.map_or(0, |h| h.revision());
    Epoch::try_from(revision).map_err(|_| {
        let reason = format!("etcd answered an owner-key write with revision {revision}");
        Error::Etcd(etcd_client::Error::Internal(reason))
    })
}

/// A guard that holds while `key` does not exist.
pub(crate) fn absent(key: &str) -> Compare {
    Compare::create_revision(key, CompareOp::Equal, 0)
}

/// Runs CPU-heavy work (inflating and decoding a large job, thousands of records) on a
/// blocking thread, so the runtime's threads (one with `--worker-threads 1`) go on with
/// leases, stops and calls meanwhile.
pub(crate) async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(|error| Error::Blocking(error.to_string()))?
}

/// `kvs` decoded, in the order etcd created them.
fn in_commit_order<M: Message + Default>(kvs: &[KeyValue]) -> Result<Vec<Versioned<M>>> {
    let mut kvs: Vec<&KeyValue> = kvs.iter().collect();
    kvs.sort_unstable_by(|a, b| {
        (a.create_revision(), a.key()).cmp(&(b.create_revision(), b.key()))
    });
    kvs.into_iter().map(decode_kv).collect()
}

fn decode_kv<M: Message + Default>(kv: &etcd_client::KeyValue) -> Result<Versioned<M>> {
    let value = decode(&String::from_utf8_lossy(kv.key()), kv.value())?;
    Ok(Versioned::of(value, kv))
}

/// etcd's errors as the coordinator's: the one place that reads what etcd answered.
impl From<etcd_client::Error> for Error {
    fn from(error: etcd_client::Error) -> Self {
        if is_too_large(&error) { Error::EtcdTooLarge(error) } else { Error::Etcd(error) }
    }
}

/// An etcd error as messages say it: a status's code and text, without the transport's
/// debug output (addresses, nested sources) that callers cannot act on.
pub(crate) fn etcd_text(error: &etcd_client::Error) -> String {
    match error {
        // The client's own timeout: the wait may have been this coordinator's as much as
        // etcd's (a coordinator starved of CPU times out calls to an idle etcd).
        etcd_client::Error::GRpcStatus(status)
            if status.code() == Code::Cancelled && status.message() == "Timeout expired" =>
        {
            "no answer within the etcd call timeout (etcd, the network to it or this \
             coordinator is overloaded or down); try again"
                .to_string()
        }
        etcd_client::Error::GRpcStatus(status) => {
            let again = matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded);
            let advice = if again { "; try again" } else { "" };
            format!("{:?}: {}{advice}", status.code(), status.message())
        }
        other => other.to_string(),
    }
}

fn is_too_large(error: &etcd_client::Error) -> bool {
    let etcd_client::Error::GRpcStatus(status) = error else { return false };
    match status.code() {
        // tonic's message size limit on this side.
        Code::OutOfRange => true,
        // gRPC's message size limit on etcd's side ("larger than max"); etcd also answers
        // RESOURCE_EXHAUSTED when overloaded ("too many requests") or out of space, which is
        // no size limit of the request (UNAVAILABLE: retry, or an operator must act).
        Code::ResourceExhausted => {
            let message = status.message();
            message.contains("larger than max") || message.contains("too large")
        }
        // etcd refuses a request over its --max-request-bytes with INVALID_ARGUMENT, the code
        // it also gives malformed requests: only its text tells the two apart.
        Code::InvalidArgument => status.message().contains("too large"),
        _ => false,
    }
}

/// The end of the key range of a prefix.
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// Decodes a raw value read from `key`, plain or deflated (`deflated.rs`).
pub(crate) fn decode<M: Message + Default>(key: &str, bytes: &[u8]) -> Result<M> {
    let plain = deflated::plain(key, bytes)?;
    M::decode(plain.as_ref()).map_err(|source| Error::Decode { key: key.to_string(), source })
}

#[cfg(test)]
mod tests;
