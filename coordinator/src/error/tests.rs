use super::*;

#[test]
fn codes_and_messages_fit_the_error() {
    let busy = Status::from(Error::JobBusy { job: "j".into(), session: "s1".into() });
    assert_eq!(busy.code(), Code::FailedPrecondition);
    assert_eq!(
        busy.message(),
        "job \"j\" already has an active session s1; stop it or wait for it to end"
    );
    let deleting = Status::from(Error::JobBusyDeleting { job: "j".into(), session: "s1".into() });
    assert_eq!(deleting.code(), Code::FailedPrecondition);
    assert!(deleting.message().starts_with("job \"j\" was not deleted: its session s1 is active"));
    let missing = Status::from(Error::RestorePointNotFound { id: "r".into(), job: "j".into() });
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(missing.message(), "restore point \"r\" does not exist in job \"j\"");
    let merging = Status::from(Error::RestorePointMerging {
        id: "r1".into(),
        child: "r2".into(),
        problem: "agent a: No space left on device".into(),
    });
    assert_eq!(merging.code(), Code::FailedPrecondition);
    assert_eq!(
        merging.message(),
        "restore point \"r1\" is being merged into restore point \"r2\" by retention (its last \
         attempt failed: agent a: No space left on device); restore or verify \"r2\" or a later \
         restore point"
    );
    let field = Status::from(Error::invalid("target_dir", "must name a directory"));
    assert_eq!(field.code(), Code::InvalidArgument);
    assert_eq!(field.message(), "target_dir: must name a directory");
    assert_eq!(Status::from(Error::Fenced("s1".into())).code(), Code::Unavailable);
    let stopped = Status::from(Error::NothingToRetry { session: "s1".into(), canceled: 2 });
    assert_eq!(
        stopped.message(),
        "session s1 has no failed or unprocessed items; its 2 items cancelled by the stop are \
         not retried (start the job to back them up)"
    );
}

#[test]
fn http_answers_with_the_status_of_the_grpc_code() {
    let missing = Error::JobNotFound { job: "j".into() }.code();
    assert_eq!((http_status(missing).as_u16(), code_name(missing)), (404, "NOT_FOUND"));
    let busy = Error::JobBusy { job: "j".into(), session: "s".into() }.code();
    assert_eq!(http_status(busy).as_u16(), 400);
    assert_eq!(http_status(Code::Unauthenticated).as_u16(), 401);
    assert_eq!(http_status(Code::PermissionDenied).as_u16(), 403);
    assert_eq!(http_status(Error::NoLease.code()).as_u16(), 503);
    assert_eq!(http_status(Code::Cancelled).as_u16(), 499);
    assert_eq!(http_status(Code::ResourceExhausted).as_u16(), 413, "a limit, not a rate");
}

#[test]
fn long_messages_are_cut_on_a_character_boundary() {
    let value = "\u{e9}".repeat(600_000);
    let full = Error::JobNotFound { job: value.clone() }.to_string().len();
    let status = Status::from(Error::JobNotFound { job: value });
    let message = status.message();
    assert!(message.len() <= MAX_MESSAGE_BYTES, "{} bytes", message.len());
    assert!(message.starts_with("job \"\u{e9}\u{e9}"), "{message:.40}");
    let note = format!("... (message cut: {full} bytes in all)");
    assert!(message.ends_with(&note), "{message}");
    let short = Status::from(Error::JobNotFound { job: "j".into() });
    assert_eq!(short.message(), "job \"j\" does not exist");
}

#[test]
fn transport_trouble_at_an_agent_is_its_absence() {
    let agent = |status| Error::Agent { agent: "a1".into(), status };
    assert_eq!(agent(Status::internal("reset")).code(), Code::Unavailable);
    assert_eq!(agent(Status::data_loss("corrupt")).code(), Code::DataLoss);
    let refused = agent(Status::failed_precondition("target_dir: /r is not empty"));
    assert_eq!(refused.to_string(), "agent a1: target_dir: /r is not empty", "one wrapping");
    let silent = agent(Status::unavailable(""));
    assert_eq!(silent.to_string(), "agent a1: The service is currently unavailable");
}
