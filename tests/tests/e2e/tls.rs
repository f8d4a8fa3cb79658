//! Scenarios: the connections themselves (issue 14). A certificate of another CA or of the
//! wrong kind is refused at the handshake; only coordinators reach an agent, so a forged
//! epoch never reaches it and the real owner still stops its session; a heartbeat speaks
//! only for the agent whose certificate sends it; secure and insecure processes refuse each
//! other with a message that says so; etcd is reached over TLS with client certificates;
//! values the cluster refuses (ids, slots, addresses, hosts) stop a node or `pki issue` at start.

use std::process::Output;

use sluice_proto::security::tls::DialTls;
use sluice_proto::{
    pb::{
        self, ItemState, SessionResult, StopMode, agent_registry_client::AgentRegistryClient,
        agent_service_client::AgentServiceClient,
    },
    security::{identity::Kind, pki::LeafSpec},
};
use sluice_tests::{
    Cluster, Etcd, EtcdClientTls, EtcdTls, Node, PATIENCE, Pki,
    api::{create_and_start, item, list_agents, stop_job, wait_stopped},
    binary,
    fixtures::{expect_code, expect_ok},
    stops::{FAST, SLOW_RATE, VmLab, start_one_slow_vm},
};
use tonic::Code;

fn pki(cluster: &Cluster) -> &Pki {
    cluster.pki().expect("a secure cluster")
}

/// ListTasks on `agent` over `tls`: `Ok`, or what failed (connection or status) as text.
async fn list_tasks_as(agent: &Node, tls: DialTls) -> Result<(), String> {
    let channel = agent.channel_with(Some(tls)).await.map_err(|e| format!("connect: {e:#}"))?;
    let mut client = AgentServiceClient::new(channel);
    let answer = client.list_tasks(pb::ListTasksRequest::default()).await;
    answer.map(drop).map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// Asserts a failure of the TLS connection itself, not an answer of a server that listened.
#[track_caller]
fn assert_refused_at_handshake(result: Result<(), String>, who: &str) {
    let failure = result.expect_err(&format!("{who} is refused"));
    let answered = ["PermissionDenied", "Unauthenticated", "InvalidArgument", "NotFound"];
    assert!(!answered.iter().any(|code| failure.starts_with(code)), "{who}: {failure}");
}

/// A CA of its own, with a client (admin), a coordinator and an agent certificate.
fn foreign_pki(cluster: &Cluster) -> Pki {
    Pki::new(&cluster.dir().join("foreign-pki"))
}

#[tokio::test]
async fn certificates_of_another_ca_or_kind_are_refused_at_the_connection() {
    let mut cluster = Cluster::builder().agents(1).start().await;
    let ours = pki(&cluster).clone();
    let foreign = foreign_pki(&cluster);

    let agent = cluster.agent(0);
    list_tasks_as(agent, agent.harness_tls().expect("TLS"))
        .await
        .expect("a coordinator certificate");
    let admin = ours.admin().clone();
    let a1 = ours.issue(&LeafSpec::new(Kind::Agent, "a1"));
    let foreign_coordinator = foreign.issue(&LeafSpec::new(Kind::Coordinator, "c1"));
    let foreign_trust = foreign.client_tls(Some(&foreign_coordinator));
    for (who, tls) in [
        ("an admin client certificate", ours.client_tls(Some(&admin))),
        ("the agent's own certificate", ours.client_tls(Some(&a1))),
        ("no certificate", ours.client_tls(None)),
        ("another CA's coordinator certificate", ours.client_tls(Some(&foreign_coordinator))),
    ] {
        assert_refused_at_handshake(
            list_tasks_as(agent, tls).await,
            &format!("on the agent, {who}"),
        );
    }
    let untrusted = list_tasks_as(agent, foreign_trust).await.expect_err("a server of another CA");
    assert!(untrusted.contains("UnknownIssuer"), "the client refuses the agent: {untrusted}");

    let coordinator = cluster.coordinator(0);
    let foreign_admin = foreign.client_tls(Some(foreign.admin()));
    let channel = coordinator.channel_with(Some(ours.client_tls(Some(foreign.admin())))).await;
    let refused = match channel {
        Ok(channel) => {
            let mut jobs = pb::job_service_client::JobServiceClient::new(channel);
            jobs.list_jobs(pb::ListJobsRequest::default())
                .await
                .map(drop)
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
        }
        Err(error) => Err(format!("connect: {error:#}")),
    };
    assert_refused_at_handshake(refused, "on the coordinator, another CA's admin certificate");
    let untrusted = coordinator.channel_with(Some(foreign_admin)).await.map(drop);
    let untrusted = untrusted.expect_err("a coordinator of another CA");
    assert!(format!("{untrusted:#}").contains("UnknownIssuer"), "{untrusted:#}");
}

#[tokio::test]
async fn a_forged_epoch_never_reaches_an_agent_and_the_owner_still_stops_its_session() {
    let mut one = start_one_slow_vm(SLOW_RATE, "nightly").await;
    let ours = pki(&one.cluster).clone();
    let foreign = foreign_pki(&one.cluster);
    let session = one.running.id.clone();
    let attackers = [
        ("an admin client certificate", ours.client_tls(Some(ours.admin()))),
        (
            "an agent certificate",
            ours.client_tls(Some(&ours.issue(&LeafSpec::new(Kind::Agent, "a1")))),
        ),
        ("no certificate", ours.client_tls(None)),
        (
            "another CA's coordinator",
            ours.client_tls(Some(&foreign.issue(&LeafSpec::new(Kind::Coordinator, "c1")))),
        ),
    ];
    let agent = one.cluster.agent(0);
    for (who, tls) in attackers {
        let forged = async {
            let channel =
                agent.channel_with(Some(tls)).await.map_err(|e| format!("connect: {e:#}"))?;
            let mut client = AgentServiceClient::new(channel);
            let cancel = pb::CancelTasksRequest {
                session_id: session.clone(),
                epoch: i64::MAX,
                item_indices: vec![],
                reason: pb::CancelReason::User as i32,
                withdrawn: vec![],
            };
            client
                .cancel_tasks(cancel)
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
            let ack = pb::AckTasksRequest { epoch: i64::MAX, keys: vec![] };
            client
                .ack_tasks(ack)
                .await
                .map(drop)
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
        };
        assert_refused_at_handshake(
            forged.await,
            &format!("CancelTasks/AckTasks with a forged epoch from {who}"),
        );
    }
    let still = item(&sluice_tests::api::get_session(&one.jobs, &session).await, "vm-0").clone();
    assert_eq!(still.state(), ItemState::Processing, "nothing was cancelled: {still:?}");

    // The owner's own cancel, with the real epoch, is not refused as stale.
    expect_ok(stop_job(&mut one.jobs, "nightly", StopMode::Immediate, "").await, "StopJob");
    let ended = wait_stopped(&one.jobs, &session).await;
    assert_eq!(ended.result(), SessionResult::Failed);
    assert_eq!(item(&ended, "vm-0").state(), ItemState::Canceled, "{ended:?}");
}

/// A heartbeat for `agent` (on `computer`), leaving, over `tls` with an optional token.
async fn heartbeat_as(
    coordinator: &Node,
    tls: DialTls,
    agent: &str,
    computer: &str,
    address: &str,
) -> Result<(), tonic::Status> {
    let channel = coordinator.channel_with(Some(tls)).await.expect("TLS connect");
    let agent = pb::Agent {
        id: agent.into(),
        address: address.into(),
        slots: 2,
        computer: computer.into(),
        ..Default::default()
    };
    let request = pb::HeartbeatRequest {
        agent: Some(agent),
        ttl_seconds: 3,
        leaving: true,
        ..Default::default()
    };
    AgentRegistryClient::new(channel).heartbeat(request).await.map(drop)
}

#[tokio::test]
async fn a_heartbeat_speaks_only_for_the_agent_whose_certificate_sends_it() {
    let mut cluster = Cluster::builder().agents(1).computers(&["pc2"]).start().await;
    let ours = pki(&cluster).clone();
    let foreign = foreign_pki(&cluster);
    let (a1, a1_address) = ("a1", cluster.agent(0).url());
    let a2 = ours.issue(&{
        let mut spec = LeafSpec::new(Kind::Agent, "a2");
        spec.computer = Some("pc2".into());
        spec
    });
    let rogue = ours.issue(&LeafSpec::new(Kind::Agent, "a9"));
    let coordinator = cluster.coordinator(0);
    let cases = [
        ("a2's certificate", ours.client_tls(Some(&a2)), a1, "", Code::PermissionDenied),
        (
            "another agent's certificate",
            ours.client_tls(Some(&rogue)),
            a1,
            "",
            Code::PermissionDenied,
        ),
        (
            "an admin client certificate",
            ours.client_tls(Some(ours.admin())),
            a1,
            "",
            Code::PermissionDenied,
        ),
        ("no credentials", ours.client_tls(None), a1, "", Code::Unauthenticated),
        (
            "a2's certificate for another computer",
            ours.client_tls(Some(&a2)),
            "a2",
            "pc9",
            Code::PermissionDenied,
        ),
    ];
    for (who, tls, agent, computer, code) in cases {
        let refused = heartbeat_as(coordinator, tls, agent, computer, &a1_address).await;
        let status = expect_code(
            refused.map(tonic::Response::new),
            code,
            &format!("a leaving heartbeat from {who}"),
        );
        assert!(!status.message().is_empty(), "{who}: the refusal says why");
    }
    let plaintext =
        heartbeat_as(coordinator, ours.client_tls(Some(&rogue)), "a9", "", "http://127.0.0.1:1")
            .await;
    let status = expect_code(
        plaintext.map(tonic::Response::new),
        Code::InvalidArgument,
        "an http:// agent address",
    );
    assert!(status.message().contains("https://"), "{status:?}");
    let forged = foreign.issue(&LeafSpec::new(Kind::Agent, "a1"));
    let channel = coordinator.channel_with(Some(ours.client_tls(Some(&forged)))).await;
    if let Ok(channel) = channel {
        let request = pb::HeartbeatRequest {
            agent: None,
            ttl_seconds: 3,
            leaving: true,
            ..Default::default()
        };
        let answer = AgentRegistryClient::new(channel).heartbeat(request).await;
        let code = answer.expect_err("another CA's agent certificate").code();
        assert!(
            !matches!(code, Code::InvalidArgument | Code::Ok),
            "refused at the handshake: {code:?}"
        );
    }

    let admin = cluster.cluster_client().await;
    let agents = list_agents(&admin).await.expect("ListAgents");
    let listed: Vec<(&str, i32)> = agents.iter().map(|a| (a.id.as_str(), a.state)).collect();
    let online = pb::AgentState::Online as i32;
    assert_eq!(listed, [("a1", online), ("a2", online)], "no agent was evicted or added");
}

/// Runs a binary with `args` until it exits (bounded); panics if it keeps running.
async fn run_to_exit(program: &str, args: &[String]) -> Output {
    let mut command = tokio::process::Command::new(binary(program));
    command.args(args).kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SLUICE_") {
            command.env_remove(key);
        }
    }
    let output = tokio::time::timeout(PATIENCE, command.output()).await;
    output
        .unwrap_or_else(|_| panic!("{program} did not exit"))
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn strings(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|part| part.to_string()).collect()
}

#[tokio::test]
async fn secure_and_insecure_processes_refuse_each_other_with_a_clear_message() {
    let mut secure = Cluster::builder().start().await;
    let etcd = secure.etcd_url().to_string();
    let ours = pki(&secure).clone();
    let neither =
        strings(&["--etcd", &etcd, "--id", "c9", "--listen", "127.0.0.1:0", "--prefix", "/unused"]);
    let refused = run_to_exit("sluice-coordinator", &neither).await;
    assert!(!refused.status.success());
    assert!(text(&refused).contains("refusing to run without TLS"), "{}", text(&refused));

    let a9 = ours.issue(&LeafSpec::new(Kind::Agent, "a9"));
    let state = secure.dir().join("a9-state").display().to_string();
    let mut agent =
        strings(&["--coordinators", "http://127.0.0.1:1", "--id", "a9", "--slots", "1"]);
    agent.extend(strings(&["--state-dir", &state, "--listen", "127.0.0.1:0"]));
    agent.extend(strings(&[
        "--tls-cert",
        &a9.cert.display().to_string(),
        "--tls-key",
        &a9.key.display().to_string(),
    ]));
    agent.extend(strings(&["--tls-ca", &ours.ca_cert().display().to_string()]));
    let refused = run_to_exit("sluice-agent", &agent).await;
    assert!(!refused.status.success());
    assert!(text(&refused).contains("is plaintext http://"), "{}", text(&refused));

    let address = secure.coordinator(0).addr().to_string();
    let plaintext =
        strings(&["--insecure", "--endpoint", &format!("http://{address}"), "job", "list"]);
    let refused = run_to_exit("sluice", &plaintext).await;
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused));
    assert!(text(&refused).contains("it may require TLS"), "{}", text(&refused));

    let mut insecure = Cluster::builder().insecure().start().await;
    let address = insecure.coordinator(0).addr().to_string();
    let mut tls_cli = ours.cli_flags();
    tls_cli.extend(strings(&["--endpoint", &address, "job", "list"]));
    let refused = run_to_exit("sluice", &tls_cli).await;
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused));
    assert!(text(&refused).contains("does not speak TLS"), "{}", text(&refused));
    let log =
        std::fs::read_to_string(insecure.coordinator(0).stderr_log()).expect("coordinator log");
    assert!(log.contains("running with --insecure"), "the insecure coordinator warns: {log}");
    let mut jobs = insecure.job_client().await;
    expect_ok(
        jobs.list_jobs(pb::ListJobsRequest::default()).await,
        "an insecure cluster serves plaintext",
    );
}

#[tokio::test]
async fn coordinators_reach_etcd_over_tls_with_client_certificates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let etcd_pki = Pki::new(&dir.path().join("etcd-pki"));
    let server = etcd_pki.issue(&LeafSpec::new(Kind::Etcd, "etcd"));
    let client = etcd_pki.issue(&LeafSpec::new(Kind::Etcd, "sluice"));
    let etcd = Etcd::dedicated_tls(EtcdTls {
        cert: server.cert.clone(),
        key: server.key.clone(),
        client_ca: etcd_pki.ca_cert(),
    });
    assert!(etcd.url().starts_with("https://"), "{}", etcd.url());
    let tls = EtcdClientTls { ca: etcd_pki.ca_cert(), cert: client.cert, key: client.key };
    let mut cluster = Cluster::builder().etcd(&etcd).etcd_tls(tls).agents(1).start().await;
    let mut lab = VmLab::new(cluster.dir());
    let mut jobs = cluster.job_client().await;
    let job = lab.vm_job("over-tls", &[FAST]).build();
    let started = create_and_start(&mut jobs, &job).await;
    let ended = wait_stopped(&jobs, &started.id).await;
    assert_eq!(ended.result(), SessionResult::Success, "{ended:?}");

    let ours = pki(&cluster).clone();
    let coordinator = ours.issue(&LeafSpec::new(Kind::Coordinator, "c9"));
    let mut args = strings(&["--etcd", etcd.url(), "--id", "c9", "--listen", "127.0.0.1:0"]);
    args.extend(strings(&["--tls-cert", &coordinator.cert.display().to_string()]));
    args.extend(strings(&["--tls-key", &coordinator.key.display().to_string()]));
    args.extend(strings(&["--tls-ca", &ours.ca_cert().display().to_string()]));
    let refused = run_to_exit("sluice-coordinator", &args).await;
    assert!(!refused.status.success());
    assert!(text(&refused).contains("needs --etcd-ca"), "{}", text(&refused));
}

#[tokio::test]
async fn a_new_ca_is_taken_without_a_restart() {
    let mut cluster = Cluster::builder().agents(1).start().await;
    let ours = pki(&cluster).clone();
    let next = Pki::new(&cluster.dir().join("next-pki"));
    let as_next_admin = || async {
        let tls = ours.client_tls(Some(next.admin()));
        let channel = cluster.coordinators()[0].channel_with(Some(tls)).await;
        let channel = channel.map_err(|e| format!("connect: {e:#}"))?;
        let mut jobs = pb::job_service_client::JobServiceClient::new(channel);
        jobs.list_jobs(pb::ListJobsRequest::default()).await.map(drop).map_err(|s| format!("{s:?}"))
    };
    assert_refused_at_handshake(as_next_admin().await, "a client of a CA not trusted yet");

    // A CA rotation's first step: every node trusts the old and the new CA.
    let both =
        [ours.ca_cert(), next.ca_cert()].map(|path| std::fs::read_to_string(path).expect("CA"));
    std::fs::write(ours.ca_cert(), both.concat()).expect("write the CA file");
    sluice_tests::wait_for(as_next_admin, PATIENCE, "the new CA's admin to be let in").await;

    let mut lab = VmLab::new(cluster.dir());
    let mut jobs = cluster.job_client().await;
    let started = create_and_start(&mut jobs, &lab.vm_job("after-rotation", &[FAST]).build()).await;
    let ended = wait_stopped(&jobs, &started.id).await;
    assert_eq!(ended.result(), SessionResult::Success, "old certificates still work: {ended:?}");
}

/// Values every coordinator would refuse stop a node at start, with the flag named, before
/// `listening on`; `pki issue` writes no certificate for such an id or a host that is no name.
#[tokio::test]
async fn values_the_cluster_refuses_stop_a_node_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state").display().to_string();
    let agent = |extra: &[&str]| {
        let mut args = strings(&["--coordinators", "http://127.0.0.1:1", "--insecure"]);
        args.extend(strings(&["--listen", "127.0.0.1:0", "--state-dir", &state]));
        args.extend(strings(extra));
        args
    };
    let cases = [
        ("sluice-agent", agent(&["--id", "a1", "--slots", "5000"]), "--slots 5000: must be 1-4096"),
        ("sluice-agent", agent(&["--id", "Proxy-A", "--slots", "1"]), "--id \"Proxy-A\": may hold"),
        (
            "sluice-agent",
            agent(&["--id", "a1", "--slots", "1", "--advertise", "not a url"]),
            "--advertise \"not a url\": must be http://host:port",
        ),
        (
            "sluice-coordinator",
            strings(&["--etcd", "http://127.0.0.1:1", "--listen", "127.0.0.1:0", "--insecure"])
                .into_iter()
                .chain(strings(&["--id", "a/b"]))
                .collect(),
            "--id: \"a/b\": may hold",
        ),
    ];
    for (program, args, says) in cases {
        let refused = run_to_exit(program, &args).await;
        let output = text(&refused);
        assert!(!refused.status.success(), "{program} {args:?}: {output}");
        assert!(output.contains(says), "{program} {args:?}: {output}");
        assert!(!output.contains("listening on"), "{program} {args:?}: {output}");
    }

    let ca = dir.path().join("ca").display().to_string();
    let init = run_to_exit("sluice", &strings(&["pki", "init", "--dir", &ca])).await;
    assert!(init.status.success(), "{}", text(&init));
    let out = dir.path().join("out");
    let issue = |extra: &[&str]| {
        let mut args = strings(&["pki", "issue", "--dir", &ca, "--kind", "agent"]);
        args.extend(strings(&["--out", &out.display().to_string()]));
        args.extend(strings(extra));
        args
    };
    for (args, says) in [
        (issue(&["--id", "Proxy-A"]), "--id \"Proxy-A\": may hold only a-z, 0-9, '.', '_' and '-'"),
        (issue(&["--id", "a1", "--host", "bad host!"]), "--host \"bad host!\": must be"),
    ] {
        let refused = run_to_exit("sluice", &args).await;
        assert!(!refused.status.success(), "{args:?}: {}", text(&refused));
        assert!(text(&refused).contains(says), "{args:?}: {}", text(&refused));
    }
    assert!(!out.join("Proxy-A.crt").exists() && !out.join("a1.crt").exists(), "nothing issued");
}
