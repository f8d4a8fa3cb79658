//! Scenarios: principals and roles over real TLS (issue 14). Calls without good credentials
//! are UNAUTHENTICATED and echo nothing back; each role may do what it grants and is refused
//! the rest with PERMISSION_DENIED naming the role needed; sessions record the authenticated
//! principal; tokens are created, listed, revoked and expire; a fresh cluster bootstraps one
//! admin token, and the CLI works with tokens and client certificates.

use sluice_proto::{
    pb::{
        self, StopMode, auth_service_client::AuthServiceClient,
        cluster_service_client::ClusterServiceClient, job_service_client::JobServiceClient,
    },
    security::{
        access::Role,
        identity::Kind,
        pki::{IssuedFiles, LeafSpec},
    },
};
use sluice_tests::{
    Cluster, PATIENCE, Pki,
    api::{create_job, wait_stopped},
    cli::bare as cli,
    fixtures::{expect_code, expect_ok},
    jobs::{JobBuilder, vm_item},
    wait_for,
};
use tonic::{Code, Request, Status, transport::Channel};

/// `message` with the token, if there is one.
fn maybe_bearer<T>(token: Option<&str>, message: T) -> Request<T> {
    match token {
        Some(token) => bearer(message, token),
        None => Request::new(message),
    }
}

/// `message` with `authorization: Bearer <token>`.
fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value = format!("Bearer {token}").parse().expect("an ASCII header");
    request.metadata_mut().insert("authorization", value);
    request
}

fn pki(cluster: &Cluster) -> &Pki {
    cluster.pki().expect("a secure cluster")
}

/// A channel to coordinator 0 trusting the cluster CA and showing no certificate.
async fn no_certificate(cluster: &Cluster) -> Channel {
    as_holder(cluster, None).await
}

/// A channel to coordinator 0 trusting the cluster CA, showing `identity` if any.
async fn as_holder(cluster: &Cluster, identity: Option<&IssuedFiles>) -> Channel {
    let tls = pki(cluster).client_tls(identity);
    let coordinator = &cluster.coordinators()[0];
    coordinator.channel_with(Some(tls)).await.expect("TLS connect")
}

/// Creates a token as the harness's admin; returns it and its secret.
async fn create_token(
    cluster: &mut Cluster,
    name: &str,
    role: &str,
    ttl: u32,
) -> (pb::Token, String) {
    let mut auth = AuthServiceClient::new(cluster.coordinator(0).channel().await);
    let request = pb::CreateTokenRequest { name: name.into(), role: role.into(), ttl_seconds: ttl };
    let created = expect_ok(auth.create_token(request).await, &format!("CreateToken {name}"));
    (created.token.expect("the token"), created.secret)
}

/// ListJobs with `token` over `channel`: `Ok` or the status.
async fn list_jobs(channel: &Channel, token: &str) -> Result<(), Status> {
    let mut jobs = JobServiceClient::new(channel.clone());
    jobs.list_jobs(bearer(pb::ListJobsRequest::default(), token)).await.map(drop)
}

#[tokio::test]
async fn calls_without_good_credentials_are_unauthenticated_and_echo_nothing() {
    let mut cluster = Cluster::builder().start().await;
    let channel = no_certificate(&cluster).await;
    let mut jobs = JobServiceClient::new(channel.clone());
    let none = expect_code(
        jobs.list_jobs(pb::ListJobsRequest::default()).await,
        Code::Unauthenticated,
        "no credentials",
    );
    assert!(none.message().starts_with("no credentials"), "{none:?}");

    let forged = "slu_0123456789abcdef_5ecre75ecre75ecre7";
    let unknown = list_jobs(&channel, forged).await.expect_err("an unknown token");
    assert_eq!(
        (unknown.code(), unknown.message()),
        (Code::Unauthenticated, "unknown or revoked token")
    );
    let garbage = list_jobs(&channel, "not-a-token-5ecre7").await.expect_err("a malformed token");
    assert_eq!(garbage.code(), Code::Unauthenticated);
    for refused in [&unknown, &garbage] {
        assert!(!refused.message().contains("5ecre7"), "the token is echoed: {refused:?}");
    }

    let (token, secret) = create_token(&mut cluster, "ci", "viewer", 0).await;
    let wrong_secret = format!("slu_{}_{}", token.id, "0".repeat(64));
    let refused = list_jobs(&channel, &wrong_secret).await.expect_err("a wrong secret");
    assert_eq!(
        (refused.code(), refused.message()),
        (Code::Unauthenticated, "unknown or revoked token")
    );
    list_jobs(&channel, &secret).await.expect("the token works");
    let mut auth = AuthServiceClient::new(cluster.coordinator(0).channel().await);
    let twin = pb::CreateTokenRequest { name: "ci".into(), role: "admin".into(), ttl_seconds: 0 };
    let status =
        expect_code(auth.create_token(twin).await, Code::AlreadyExists, "a second token \"ci\"");
    assert!(status.message().contains("\"ci\" exists already"), "{status:?}");
    let blank = pb::RevokeTokenRequest { id: String::new(), ..Default::default() };
    expect_code(auth.revoke_token(blank).await, Code::InvalidArgument, "RevokeToken of \"\"");
    let revoked = expect_ok(
        auth.revoke_token(pb::RevokeTokenRequest { id: token.id.clone(), ..Default::default() })
            .await,
        "RevokeToken",
    );
    assert_eq!(revoked.token.map(|t| t.name).as_deref(), Some("ci"));
    let after = list_jobs(&channel, &secret).await.expect_err("a revoked token");
    assert_eq!(after.code(), Code::Unauthenticated, "{after:?}");
    let again = pb::RevokeTokenRequest { id: token.id, ..Default::default() };
    expect_code(auth.revoke_token(again).await, Code::NotFound, "RevokeToken twice");

    let (_, short) = create_token(&mut cluster, "short-lived", "admin", 1).await;
    let expired = wait_for(
        || async {
            match list_jobs(&channel, &short).await {
                Err(status) if status.code() == Code::Unauthenticated => Ok(status),
                other => Err(format!("{other:?}")),
            }
        },
        PATIENCE,
        "the 1 s token to expire",
    )
    .await;
    assert_eq!(expired.message(), "token expired");
    // An expired token's name is free again.
    create_token(&mut cluster, "short-lived", "viewer", 0).await;
}

/// One call of the API with harmless arguments, and the role it needs.
#[derive(Debug, Clone, Copy)]
enum Call {
    ListJobs,
    GetSession,
    CreateJob,
    DeleteJob,
    StartJob,
    StopJob,
    RetrySession,
    StopAll,
    VerifyRestorePoint,
    RestoreRestorePoint,
    DeleteRestorePoint,
    ListAgents,
    DrainAgent,
    ListTokens,
}

impl Call {
    const ALL: [Call; 14] = [
        Call::ListJobs,
        Call::GetSession,
        Call::CreateJob,
        Call::DeleteJob,
        Call::StartJob,
        Call::StopJob,
        Call::RetrySession,
        Call::StopAll,
        Call::VerifyRestorePoint,
        Call::RestoreRestorePoint,
        Call::DeleteRestorePoint,
        Call::ListAgents,
        Call::DrainAgent,
        Call::ListTokens,
    ];

    fn needs(self) -> Role {
        match self {
            Call::ListJobs | Call::GetSession | Call::ListAgents => Role::Viewer,
            Call::StartJob | Call::StopJob | Call::RetrySession | Call::VerifyRestorePoint => {
                Role::Operator
            }
            Call::RestoreRestorePoint => Role::RestoreOperator,
            Call::CreateJob
            | Call::DeleteJob
            | Call::StopAll
            | Call::DeleteRestorePoint
            | Call::DrainAgent
            | Call::ListTokens => Role::Admin,
        }
    }

    /// The call's status code (`Ok` as `Code::Ok`); nothing it names exists, so an
    /// authorised call changes nothing.
    async fn code(self, channel: &Channel, token: Option<&str>) -> Code {
        let mut jobs = JobServiceClient::new(channel.clone());
        let mut cluster = ClusterServiceClient::new(channel.clone());
        let mut auth = AuthServiceClient::new(channel.clone());
        let missing = || "no-such".to_string();
        let result = match self {
            Call::ListJobs => {
                jobs.list_jobs(maybe_bearer(token, pb::ListJobsRequest::default())).await.map(drop)
            }
            Call::GetSession => {
                let request = pb::GetSessionRequest { session_id: missing(), ..Default::default() };
                jobs.get_session(maybe_bearer(token, request)).await.map(drop)
            }
            Call::CreateJob => jobs
                .create_job(maybe_bearer(token, pb::CreateJobRequest { job: None }))
                .await
                .map(drop),
            Call::DeleteJob => jobs
                .delete_job(maybe_bearer(token, pb::DeleteJobRequest { name: missing() }))
                .await
                .map(drop),
            Call::StartJob => jobs
                .start_job(maybe_bearer(token, pb::StartJobRequest { job: missing(), full: false }))
                .await
                .map(drop),
            Call::StopJob => {
                let stop = pb::StopJobRequest {
                    job: missing(),
                    mode: StopMode::Immediate as i32,
                    ..Default::default()
                };
                jobs.stop_job(maybe_bearer(token, stop)).await.map(drop)
            }
            Call::RetrySession => {
                let retry = pb::RetrySessionRequest { session_id: missing() };
                jobs.retry_session(maybe_bearer(token, retry)).await.map(drop)
            }
            Call::StopAll => {
                jobs.stop_all(maybe_bearer(token, pb::StopAllRequest::default())).await.map(drop)
            }
            Call::VerifyRestorePoint => {
                let verify =
                    pb::VerifyRestorePointRequest { job: missing(), restore_point_id: missing() };
                jobs.verify_restore_point(maybe_bearer(token, verify)).await.map(drop)
            }
            Call::RestoreRestorePoint => {
                let restore = pb::RestoreRestorePointRequest {
                    job: missing(),
                    restore_point_id: missing(),
                    target_dir: "/nonexistent/restore".into(),
                    ..Default::default()
                };
                jobs.restore_restore_point(maybe_bearer(token, restore)).await.map(drop)
            }
            Call::DeleteRestorePoint => {
                let delete = pb::DeleteRestorePointRequest { id: missing(), job: missing() };
                jobs.delete_restore_point(maybe_bearer(token, delete)).await.map(drop)
            }
            Call::ListAgents => {
                cluster.list_agents(maybe_bearer(token, pb::ListAgentsRequest {})).await.map(drop)
            }
            Call::DrainAgent => {
                let drain = pb::DrainAgentRequest { agent: missing(), deadline_seconds: 0 };
                cluster.drain_agent(maybe_bearer(token, drain)).await.map(drop)
            }
            Call::ListTokens => {
                auth.list_tokens(maybe_bearer(token, pb::ListTokensRequest {})).await.map(drop)
            }
        };
        result.map_or_else(|status| status.code(), |()| Code::Ok)
    }
}

/// Checks every call as `who`, whose role is `role`: granted calls pass the layer (any code
/// but PERMISSION_DENIED and UNAUTHENTICATED), the others are PERMISSION_DENIED.
async fn check_rights(channel: &Channel, token: Option<&str>, role: Option<Role>, who: &str) {
    for call in Call::ALL {
        let code = call.code(channel, token).await;
        let granted = role.is_some_and(|role| role.grants(call.needs()));
        if granted {
            assert!(
                !matches!(code, Code::PermissionDenied | Code::Unauthenticated),
                "{who} may call {call:?}, got {code:?}"
            );
        } else {
            assert_eq!(code, Code::PermissionDenied, "{who} may not call {call:?}");
        }
    }
}

#[tokio::test]
async fn each_role_may_do_what_it_grants_and_is_refused_the_rest_naming_the_role() {
    let mut cluster = Cluster::builder().start().await;
    let channel = no_certificate(&cluster).await;
    for role in Role::ALL {
        let (_, secret) = create_token(&mut cluster, &format!("as-{role}"), role.as_str(), 0).await;
        check_rights(&channel, Some(&secret), Some(role), &format!("a {role} token")).await;
        let who = AuthServiceClient::new(channel.clone())
            .who_am_i(bearer(pb::WhoAmIRequest {}, &secret))
            .await;
        let who = expect_ok(who, "WhoAmI");
        assert_eq!((who.kind.as_str(), who.role.as_str()), ("token", role.as_str()));
    }
    let viewer = pki(&cluster).client("vera", Role::Viewer);
    let mut as_viewer = ClusterServiceClient::new(as_holder(&cluster, Some(&viewer)).await);
    let denied = pb::DrainAgentRequest { agent: "a1".into(), deadline_seconds: 0 };
    let refused = as_viewer.drain_agent(denied).await;
    let refused = expect_code(refused, Code::PermissionDenied, "DrainAgent as a viewer");
    assert_eq!(refused.message(), "requires role admin");

    let operator = pki(&cluster).client("olga", Role::Operator);
    let as_operator = as_holder(&cluster, Some(&operator)).await;
    check_rights(&as_operator, None, Some(Role::Operator), "an operator certificate").await;
    let agent = pki(&cluster).issue(&LeafSpec::new(Kind::Agent, "a7"));
    let as_agent = as_holder(&cluster, Some(&agent)).await;
    check_rights(&as_agent, None, None, "an agent certificate").await;
}

/// A cluster without agents and its admin client, with job `name` of one VM item: the
/// item waits, so a session of the job runs until it is stopped.
async fn cluster_with_a_waiting_job(name: &str) -> (Cluster, JobServiceClient<Channel>) {
    let mut cluster = Cluster::builder().start().await;
    let mut admin = cluster.job_client().await;
    let job = JobBuilder::vm(name).item(vm_item("vm-0", &["/nonexistent/vm-0.qcow2"])).build();
    create_job(&mut admin, job).await;
    (cluster, admin)
}

#[tokio::test]
async fn sessions_record_the_authenticated_principal_not_the_name_a_caller_claims() {
    let (mut cluster, admin) = cluster_with_a_waiting_job("nightly").await;
    let (_, secret) = create_token(&mut cluster, "ops-bot", "operator", 0).await;
    let mut jobs = JobServiceClient::new(no_certificate(&cluster).await);

    let started = jobs
        .start_job(bearer(pb::StartJobRequest { job: "nightly".into(), full: false }, &secret))
        .await;
    let started = expect_ok(started, "StartJob as ops-bot");
    assert_eq!(started.started_by, "token:ops-bot");
    let stop = pb::StopJobRequest {
        job: "nightly".into(),
        mode: StopMode::Immediate as i32,
        requested_by: "mallory@elsewhere".into(),
        ..Default::default()
    };
    let stopping = expect_ok(jobs.stop_job(bearer(stop, &secret)).await, "StopJob as ops-bot");
    assert_eq!(stopping.stopped_by, "token:ops-bot", "the claimed name is not recorded");
    let ended = wait_stopped(&admin, &started.id).await;
    assert_eq!(
        (ended.started_by.as_str(), ended.stopped_by.as_str()),
        ("token:ops-bot", "token:ops-bot")
    );
}

/// A session watch a token opened ends with UNAUTHENTICATED once the token is revoked, as
/// its next call would be refused; another token's watch goes on to the session's end.
#[tokio::test]
async fn a_revoked_tokens_open_session_watch_ends() {
    let (mut cluster, mut admin) = cluster_with_a_waiting_job("watched").await;
    let start = pb::StartJobRequest { job: "watched".into(), full: false };
    let session = expect_ok(admin.start_job(start).await, "StartJob");
    let (token, revoked) = create_token(&mut cluster, "watcher", "viewer", 0).await;
    let (_, kept) = create_token(&mut cluster, "other-watcher", "viewer", 0).await;
    let mut jobs = JobServiceClient::new(no_certificate(&cluster).await);
    let request = pb::WatchSessionRequest { session_id: session.id.clone(), ..Default::default() };
    let watch = |secret: &str| bearer(request.clone(), secret);
    let mut ending = expect_ok(jobs.watch_session(watch(&revoked)).await, "WatchSession");
    let mut going_on = expect_ok(jobs.watch_session(watch(&kept)).await, "WatchSession");
    ending.message().await.expect("the first event").expect("an event");

    let mut auth = AuthServiceClient::new(cluster.coordinator(0).channel().await);
    expect_ok(
        auth.revoke_token(pb::RevokeTokenRequest { id: token.id, ..Default::default() }).await,
        "RevokeToken",
    );
    let ended = last_error(&mut ending).await;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains("revoked"), "{ended:?}");
    // A token that expires ends its watch the same way, when its time is up.
    let (_, brief) = create_token(&mut cluster, "brief-watcher", "viewer", 1).await;
    let expired = match jobs.watch_session(watch(&brief)).await {
        Ok(expiring) => last_error(&mut expiring.into_inner()).await,
        Err(status) => status, // the second ran out before the call on a loaded machine
    };
    assert_eq!(expired.code(), Code::Unauthenticated, "{expired:?}");
    assert!(expired.message().contains("expired"), "{expired:?}");

    let stop = pb::StopJobRequest {
        job: "watched".into(),
        mode: StopMode::Immediate as i32,
        ..Default::default()
    };
    expect_ok(admin.stop_job(stop).await, "StopJob");
    while going_on.message().await.expect("the other token's watch goes on").is_some() {}
}

/// The error a watch ends with (it must end with one).
async fn last_error(watch: &mut tonic::Streaming<pb::SessionEvent>) -> Status {
    loop {
        match watch.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the watch ended without an error"),
            Err(status) => return status,
        }
    }
}

fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|part| part.to_string()).collect()
}

#[tokio::test]
async fn a_fresh_cluster_bootstraps_one_admin_token_and_the_cli_manages_tokens_and_certificates() {
    let mut cluster = Cluster::builder().bootstrap_token().start().await;
    let file = cluster.bootstrap_token_file();
    let bootstrap = wait_for(
        || async { std::fs::read_to_string(&file).map(|text| text.trim().to_string()) },
        PATIENCE,
        "the bootstrap token file",
    )
    .await;
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&file).expect("file").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the token file is private");
    let url = cluster.coordinator(0).url();
    let ca = pki(&cluster).ca_cert().display().to_string();
    let base = |token: &str| args(&["--endpoint", &url, "--ca-cert", &ca, "--token", token]);

    let (code, out) = cli(&[base(&bootstrap), args(&["whoami"])].concat()).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("bootstrap") && out.contains("admin"), "{out}");
    // The token read from a file (kept out of `ps`): the bootstrap token file itself.
    let from_file = args(&["--endpoint", &url, "--ca-cert", &ca, "--token-file"]);
    let whoami = [from_file, vec![file.display().to_string(), "whoami".into()]].concat();
    let (code, out) = cli(&whoami).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("bootstrap") && out.contains("admin"), "{out}");
    let create = args(&["--output", "json", "token", "create", "ci", "--role", "viewer"]);
    let (code, out) = cli(&[base(&bootstrap), create].concat()).await;
    assert_eq!(code, 0, "{out}");
    let created: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let secret = created["secret"].as_str().expect("a secret").to_string();
    let id = created["token"]["id"].as_str().expect("an id").to_string();
    assert_eq!(created["token"]["created_by"], "token:bootstrap");

    let (code, out) = cli(&[base(&bootstrap), args(&["token", "list"])].concat()).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&id) && out.contains("bootstrap") && !out.contains(&secret), "{out}");
    let (code, out) = cli(&[base(&secret), args(&["job", "list"])].concat()).await;
    assert_eq!(code, 0, "a viewer lists jobs: {out}");
    let (code, out) = cli(&[base(&secret), args(&["job", "delete", "x"])].concat()).await;
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("permission denied: requires role admin"), "{out}");
    let (code, out) = cli(&[base(&bootstrap), args(&["token", "revoke", &id])].concat()).await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli(&[base(&secret), args(&["job", "list"])].concat()).await;
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("unauthenticated") && !out.contains(&secret), "{out}");

    // A certificate made with the CLI's own pki commands, from the cluster's CA.
    let out_dir = cluster.dir().join("cli-certs");
    let issue = [
        "pki",
        "issue",
        "--dir",
        &pki(&cluster).ca_dir().display().to_string(),
        "--kind",
        "client",
        "--id",
        "olga",
        "--role",
        "operator",
        "--out",
        &out_dir.display().to_string(),
    ];
    let (code, out) = cli(&args(&issue)).await;
    assert_eq!(code, 0, "{out}");
    let cert = out_dir.join("olga.crt").display().to_string();
    let key = out_dir.join("olga.key").display().to_string();
    let whoami =
        args(&["--endpoint", &url, "--ca-cert", &ca, "--cert", &cert, "--key", &key, "whoami"]);
    let (code, out) = cli(&whoami).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("olga") && out.contains("client") && out.contains("operator"), "{out}");
}
