//! Large values stored deflated (zlib) behind a mark: a job of 100,000 items is several MiB
//! of protobuf, and etcd's backend rewrites the page run of a value that size in each of its
//! next commits, while writes behind them wait (15-34 ms a commit after a 4.6 MB job, against
//! about 1 ms). Names and paths deflate about tenfold. Values under [`DEFLATE_FROM`] stay plain
//! protobuf, as every value did before, so most jobs read the same for any coordinator.

use std::borrow::Cow;
use std::io::{Read, Write};

use flate2::{Compression, read::ZlibDecoder, write::ZlibEncoder};
use prost::Message;

use crate::error::{Error, Result};

/// What starts a deflated value. No protobuf message starts with 0xFF: its wire type, 7, does
/// not exist.
const MARK: [u8; 2] = [0xFF, 0x01];

/// Encoded size from which a value is stored deflated (a job of about 1,000 items).
pub(crate) const DEFLATE_FROM: usize = 64 * 1024;

/// The value stored for `message`: deflated from [`DEFLATE_FROM`] bytes on, else plain.
pub(crate) fn encode(message: &impl Message) -> Vec<u8> {
    let plain = message.encode_to_vec();
    if plain.len() < DEFLATE_FROM {
        return plain;
    }
    let mut encoder = ZlibEncoder::new(MARK.to_vec(), Compression::fast());
    // Writing into a Vec does not fail; were it to, the plain value reads all the same.
    match encoder.write_all(&plain).and_then(|()| encoder.finish()) {
        Ok(deflated) => deflated,
        Err(_) => plain,
    }
}

/// Whether a stored value is deflated (its protobuf is [`DEFLATE_FROM`] bytes or more).
pub(crate) fn is_deflated(value: &[u8]) -> bool {
    value.starts_with(&MARK)
}

/// [`encode`], on a blocking thread when the value is deflated; the message is handed back.
pub(crate) async fn encode_off_runtime<M: Message + Send + 'static>(
    message: M,
) -> Result<(M, Vec<u8>)> {
    if message.encoded_len() < DEFLATE_FROM {
        let value = encode(&message);
        return Ok((message, value));
    }
    super::off_runtime(move || {
        let value = encode(&message);
        Ok((message, value))
    })
    .await
}

/// The protobuf bytes of a stored value, deflated or plain; `key` names it in errors.
pub(crate) fn plain<'a>(key: &str, value: &'a [u8]) -> Result<Cow<'a, [u8]>> {
    let Some(deflated) = value.strip_prefix(&MARK) else { return Ok(Cow::Borrowed(value)) };
    let mut plain = Vec::new();
    ZlibDecoder::new(deflated)
        .read_to_end(&mut plain)
        .map_err(|source| Error::Inflate { key: key.to_string(), source })?;
    Ok(Cow::Owned(plain))
}

#[cfg(test)]
mod tests {
    use sluice_proto::pb;

    use super::*;
    use crate::store::decode;

    fn job(items: usize) -> pb::Job {
        let items = (0..items)
            .map(|i| pb::JobItem { name: format!("vm-{i}"), ..Default::default() })
            .collect();
        pb::Job { name: "nightly".into(), items, ..Default::default() }
    }

    #[test]
    fn a_large_value_reads_back_and_is_far_smaller() {
        let job = job(10_000);
        let stored = encode(&job);
        assert!(stored.starts_with(&MARK));
        assert!(stored.len() * 4 < job.encoded_len(), "{} of {}", stored.len(), job.encoded_len());
        assert_eq!(decode::<pb::Job>("k", &stored).expect("decoded"), job);
    }

    #[test]
    fn a_small_value_stays_plain_protobuf() {
        let job = job(3);
        assert_eq!(encode(&job), job.encode_to_vec());
        assert_eq!(decode::<pb::Job>("k", &job.encode_to_vec()).expect("decoded"), job);
    }

    #[test]
    fn a_damaged_value_is_an_error_naming_its_key() {
        let mut stored = encode(&job(10_000));
        stored.truncate(stored.len() / 2);
        let error = decode::<pb::Job>("/sluice/jobs/nightly", &stored).expect_err("damaged");
        assert!(matches!(error, Error::Inflate { .. }), "{error}");
        assert!(error.to_string().contains("/sluice/jobs/nightly"), "{error}");
    }
}
