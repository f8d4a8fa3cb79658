//! Issue 17: the console in a real browser. Headless Chromium, driven by Playwright
//! (`tests/console/console.mjs`), opens the console of a real cluster, sees the job, clicks
//! Start, watches the items progress, clicks Stop > Gracefully and sees the session end
//! WARNING and canceled with its NOT_PROCESSED items; then clicks Retry, stops the retry
//! Immediately and sees it end FAILED with CANCELED items, visits History, Agents and
//! Coordinators, and verifies a restore point. Then it starts a session of [`LARGE_ITEMS`]
//! sim items, pages through its items, watches it with a second token that this test revokes
//! meanwhile (the page shows Sign in, saying so, and no "lost the connection" banner), signs
//! in again and stops it. The cluster is secure: the browser reaches the console over HTTPS
//! and signs in with an operator's API token. Screenshots go to
//! `target/console-screenshots/` (`session-view.png`, `large-session.png`, and `failure.png`
//! when a step fails).

use std::{path::PathBuf, process::Stdio, time::Duration};

use sluice_proto::pb::{
    self, ItemState, SessionResult, SessionState, auth_service_client::AuthServiceClient,
};
use sluice_tests::{
    Cluster,
    api::{create_job, get_session},
    http::create_token,
    jobs::JobBuilder,
    stops::{SLOW, SLOW_RATE, slow_cluster},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, BufReader},
    process::Command,
};

/// The whole browser scenario: a Chromium start, about 10 s of transfers, and slack for a
/// loaded machine.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(300);

/// Items of the large session: more than the console shows on one page (500), and enough
/// for the server to pace its events (from 1,000).
const LARGE_ITEMS: usize = 1_200;

/// What the script prints when it waits for this test to revoke its second token.
const REVOKE_NOW: &str = "await: revoke the second token";

fn console_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("console")
}

fn screenshot_dir() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace.join("target"), PathBuf::from);
    target.join("console-screenshots")
}

#[tokio::test]
async fn start_stop_and_retry_in_the_browser() {
    let dir = console_dir();
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "{}/node_modules/playwright-core is missing: run `bash .ci/install` (it runs `npm ci` there)",
        dir.display()
    );
    let (mut cluster, mut lab) = slow_cluster(1, SLOW_RATE).await;
    // Two slots, four VMs of about 8 s each: two run while two wait, so a graceful stop lets
    // two commit and leaves two not processed.
    let job = lab.vm_job("console-demo", &[SLOW; 4]).build();
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, job).await;
    // Sim items of 1 s on two slots: it runs for minutes, until the browser stops it.
    let large = JobBuilder::sim("console-large", 1_000)
        .placeholder_vms(LARGE_ITEMS)
        .repository(lab.repository())
        .build();
    create_job(&mut jobs, large).await;

    run_scenario(&cluster).await;

    // What the browser saw is what the cluster stored.
    let sessions = jobs
        .list_sessions(pb::ListSessionsRequest { job: "console-demo".into(), ..Default::default() })
        .await
        .unwrap_or_else(|status| panic!("ListSessions: {status}"))
        .into_inner()
        .sessions;
    assert_eq!(sessions.len(), 2, "a session and its retry, both from the browser: {sessions:?}");
    let (retries, firsts): (Vec<_>, Vec<_>) =
        sessions.iter().partition(|session| !session.retry_of.is_empty());
    let session = get_session(&jobs, &firsts[0].id).await;
    assert_eq!(session.state(), SessionState::Stopped);
    assert_eq!(
        session.result(),
        SessionResult::Warning,
        "a graceful stop of items that all succeeded"
    );
    assert!(session.canceled, "the session was stopped by a user");
    assert_eq!(
        (session.started_by.as_str(), session.stopped_by.as_str()),
        ("token:console", "token:console"),
        "the browser's token is the principal"
    );
    let count = |state| session.items.iter().filter(|i| i.state() == state).count();
    assert_eq!(
        (count(ItemState::Success), count(ItemState::NotProcessed)),
        (2, 2),
        "{:?}",
        session.items
    );
    let retry = get_session(&jobs, &retries[0].id).await;
    assert_eq!(retry.retry_of, session.id);
    assert_eq!((retry.state(), retry.result()), (SessionState::Stopped, SessionResult::Failed));
    assert!(retry.canceled && retry.stopped_by == "token:console", "{retry:?}");
    let names = |items: &[pb::ItemStatus], state| {
        items.iter().filter(|i| i.state() == state).map(|i| i.name.clone()).collect::<Vec<_>>()
    };
    assert_eq!(
        names(&retry.items, ItemState::Canceled),
        names(&session.items, ItemState::NotProcessed),
        "the retry ran the items the graceful stop left, and the immediate stop canceled them"
    );
    lab.assert_no_leftovers("after the graceful and immediate stops from the console");

    let large = jobs
        .list_sessions(pb::ListSessionsRequest {
            job: "console-large".into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|status| panic!("ListSessions: {status}"))
        .into_inner()
        .sessions;
    assert_eq!(large.len(), 1, "the large session, from the browser: {large:?}");
    let large = get_session(&jobs, &large[0].id).await;
    assert_eq!(large.items.len(), LARGE_ITEMS);
    assert!(
        large.state() == SessionState::Stopped && large.canceled,
        "stopped from the browser: {:?} canceled {}",
        large.state(),
        large.canceled
    );
}

/// Runs `console.mjs` against the cluster's first coordinator; revokes its second token when
/// it asks; fails with its output unless it passes.
async fn run_scenario(cluster: &Cluster) {
    let dir = console_dir();
    let screenshots = screenshot_dir();
    let coordinator = &cluster.coordinators()[0];
    let token = create_token(coordinator, "console", "operator").await;
    let doomed = create_token(coordinator, "console-revoked", "operator").await;
    let pki = cluster.pki().expect("a secure cluster");
    let mut child = Command::new("node")
        .arg(dir.join("console.mjs"))
        .current_dir(&dir)
        .env("CONSOLE_URL", format!("{}/", coordinator.http_url()))
        .env("TOKEN", token)
        .env("REVOKED_TOKEN", &doomed)
        .env("CONSOLE_CERT", pki.certificate("c1"))
        .env("JOB", "console-demo")
        .env("LARGE_JOB", "console-large")
        .env("SCREENSHOT_DIR", &screenshots)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run node (is Node.js 20 installed? `bash .ci/install`): {e}")
        });
    let mut stderr = child.stderr.take().expect("piped stderr");
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        stderr.read_to_string(&mut text).await.expect("the script's stderr");
        text
    });
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let run = async {
        let mut stdout = String::new();
        while let Some(line) = lines.next_line().await.expect("the script's stdout") {
            println!("{line}");
            if line == REVOKE_NOW {
                revoke(cluster, &doomed).await;
            }
            stdout.push_str(&line);
            stdout.push('\n');
        }
        (stdout, child.wait().await.expect("the script's exit"))
    };
    let (stdout, status) = tokio::time::timeout(SCENARIO_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| panic!("the browser scenario did not end within {SCENARIO_TIMEOUT:?}"));
    let stderr = errors.await.expect("the stderr reader");
    assert!(
        status.success(),
        "the browser scenario failed ({status}); screenshots in {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        screenshots.display()
    );
}

/// Revokes a token by its secret (`slu_<id>_<hex>`).
async fn revoke(cluster: &Cluster, secret: &str) {
    let id = secret.split('_').nth(1).expect("a token secret names its id");
    let mut auth = AuthServiceClient::new(cluster.coordinators()[0].channel().await);
    auth.revoke_token(pb::RevokeTokenRequest { id: id.to_string(), ..Default::default() })
        .await
        .unwrap_or_else(|status| panic!("RevokeToken {id}: {status}"));
}
