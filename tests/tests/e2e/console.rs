//! Issue 17: the console in a real browser. Headless Chromium, driven by Playwright
//! (`tests/console/console.mjs`), opens the console of a real cluster, sees the job, clicks
//! Start, watches the items progress, clicks Stop > Gracefully and sees the session end
//! WARNING and canceled with its NOT_PROCESSED items; then clicks Retry, stops the retry
//! Immediately and sees it end FAILED with CANCELED items, visits History, Agents and
//! Coordinators, and verifies a restore point. The cluster is secure: the browser reaches
//! the console over HTTPS and signs in with an operator's API token. Screenshots go to
//! `target/console-screenshots/` (`session-view.png`, and `failure.png` when a step fails).

use std::{path::PathBuf, process::Stdio, time::Duration};

use sluice_proto::pb::{ItemState, SessionResult, SessionState};
use sluice_tests::{
    api::{create_job, get_session},
    http::create_token,
    stops::{SLOW, SLOW_RATE, slow_cluster},
};
use tokio::process::Command;

/// The whole browser scenario: a Chromium start, about 10 s of transfers, and slack for a
/// loaded machine.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(300);

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

    let screenshots = screenshot_dir();
    let coordinator = cluster.coordinator(0);
    let token = create_token(coordinator, "console", "operator").await;
    let pki = cluster.pki().expect("a secure cluster");
    let run = Command::new("node")
        .arg(dir.join("console.mjs"))
        .current_dir(&dir)
        .env("CONSOLE_URL", format!("{}/", cluster.coordinators()[0].http_url()))
        .env("TOKEN", token)
        .env("CONSOLE_CERT", pki.certificate("c1"))
        .env("JOB", "console-demo")
        .env("SCREENSHOT_DIR", &screenshots)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(SCENARIO_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| panic!("the browser scenario did not end within {SCENARIO_TIMEOUT:?}"))
        .unwrap_or_else(|e| {
            panic!("cannot run node (is Node.js 20 installed? `bash .ci/install`): {e}")
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the browser scenario failed ({}); screenshots in {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        output.status,
        screenshots.display()
    );

    // What the browser saw is what the cluster stored.
    let sessions = jobs
        .list_sessions(sluice_proto::pb::ListSessionsRequest { job: "console-demo".into() })
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
    let names = |items: &[sluice_proto::pb::ItemStatus], state| {
        items.iter().filter(|i| i.state() == state).map(|i| i.name.clone()).collect::<Vec<_>>()
    };
    assert_eq!(
        names(&retry.items, ItemState::Canceled),
        names(&session.items, ItemState::NotProcessed),
        "the retry ran the items the graceful stop left, and the immediate stop canceled them"
    );
    lab.assert_no_leftovers("after the graceful and immediate stops from the console");
}
