//! Request bodies read through the JSON mapping: large ones off the runtime, a job's items
//! counted before they are built.

use crate::http::reply::{ApiError, parse, parse_job};
use axum::body::Bytes;
use sluice_proto::job::MAX_ITEMS;

/// A job body of `items` VM items, as compact JSON.
fn job_body(items: usize) -> Bytes {
    let items: Vec<String> = (0..items)
        .map(|n| format!(r#"{{"name":"vm-{n}","vm":{{"disks":["/d/{n}.qcow2"]}}}}"#))
        .collect();
    let text = format!(
        r#"{{"name":"big","type":"JOB_TYPE_VM_BACKUP","repository":"/r","items":[{}]}}"#,
        items.join(",")
    );
    Bytes::from(text)
}

/// A million items took the coordinator 2 GB and half a minute to map before the job's
/// limits refused them: they are counted first.
#[tokio::test]
async fn a_job_body_of_too_many_items_is_refused_before_it_is_built() {
    let error = parse_job(&job_body(MAX_ITEMS + 1)).await.expect_err("too many items");
    let (code, message) = code_and_message(&error);
    assert_eq!(code, "RESOURCE_EXHAUSTED");
    assert!(message.contains("job.items") && message.contains("100000"), "{message}");
}

/// A large body is read (off the runtime) as any other.
#[tokio::test]
async fn a_large_job_body_is_read_whole() {
    let body = job_body(5_000);
    assert!(body.len() > 64 * 1024, "large enough to be read off the runtime");
    let job = parse_job(&body).await.expect("a valid job");
    assert_eq!((job.items.len(), job.items[4_999].name.as_str()), (5_000, "vm-4999"));
    let error = parse::<sluice_proto::pb::StopJobRequest>(&body).await.expect_err("not a stop");
    assert_eq!(code_and_message(&error).0, "INVALID_ARGUMENT", "{error:?}");
}

fn code_and_message(error: &ApiError) -> (String, String) {
    let body = serde_json::to_value(error.body()).unwrap_or_default();
    let text = |field: &str| body[field].as_str().unwrap_or_default().to_string();
    (text("code"), text("message"))
}
