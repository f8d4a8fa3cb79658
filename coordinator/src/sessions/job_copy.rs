//! The session's copy of its job (`/sessions/{id}/job`), written once at its start: the
//! `Job` protobuf, deflated. A job of 100,000 items is several MiB, and etcd's next backend
//! commit of a value that size held up the writes behind it (a StopJob's among them) by
//! 8-78 ms; its items' names and paths deflate about tenfold. Copies written before are
//! plain protobuf, and are read as such.

use std::io::{Read, Write};

use flate2::{Compression, read::ZlibDecoder, write::ZlibEncoder};
use prost::Message;
use sluice_proto::pb;

use crate::{
    error::{Error, Result},
    store::{self, Store},
};

/// What starts a deflated copy. No protobuf message starts with 0xFF: its wire type, 7, does
/// not exist.
const DEFLATED: [u8; 2] = [0xFF, 0x01];

/// The value stored for `job`.
pub(crate) fn encode(job: &pb::Job) -> Vec<u8> {
    let plain = job.encode_to_vec();
    let mut encoder = ZlibEncoder::new(DEFLATED.to_vec(), Compression::fast());
    // Writing into a Vec does not fail; were it to, the plain copy reads all the same.
    match encoder.write_all(&plain).and_then(|()| encoder.finish()) {
        Ok(deflated) => deflated,
        Err(_) => plain,
    }
}

/// The job of a stored copy, deflated or plain; `key` names it in errors.
pub(crate) fn decode(key: &str, value: &[u8]) -> Result<pb::Job> {
    let Some(deflated) = value.strip_prefix(&DEFLATED) else {
        return store::decode(key, value);
    };
    let mut plain = Vec::new();
    ZlibDecoder::new(deflated)
        .read_to_end(&mut plain)
        .map_err(|source| Error::Inflate { key: key.to_string(), source })?;
    store::decode(key, &plain)
}

/// The copy of session `id`'s job, if it is stored.
pub(crate) async fn load(store: &Store, id: &str) -> Result<Option<pb::Job>> {
    let key = store.keys().session_job(id);
    let response = store.kv().get(key.as_str(), None).await?;
    response.kvs().first().map(|kv| decode(&key, kv.value())).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(items: usize) -> pb::Job {
        let items = (0..items)
            .map(|i| pb::JobItem { name: format!("vm-{i}"), ..Default::default() })
            .collect();
        pb::Job { name: "nightly".into(), items, ..Default::default() }
    }

    #[test]
    fn a_copy_reads_back_as_the_job_and_is_far_smaller() {
        let job = job(10_000);
        let stored = encode(&job);
        assert!(stored.len() * 4 < job.encoded_len(), "{} of {}", stored.len(), job.encoded_len());
        assert_eq!(decode("k", &stored).expect("decoded"), job);
    }

    #[test]
    fn a_plain_copy_written_before_still_reads() {
        let job = job(3);
        assert_eq!(decode("k", &job.encode_to_vec()).expect("decoded"), job);
    }

    #[test]
    fn a_damaged_copy_is_an_error_naming_its_key() {
        let mut stored = encode(&job(100));
        stored.truncate(stored.len() / 2);
        let error = decode("/sluice/sessions/s1/job", &stored).expect_err("damaged");
        assert!(error.to_string().contains("/sluice/sessions/s1/job"), "{error}");
    }
}
