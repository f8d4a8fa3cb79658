//! A session's items a page at a time, with its counts by state: `GetSession` and
//! `WatchSession` with `item_offset`/`item_limit`, the same over HTTP (`GET
//! /api/v1/sessions/{id}?itemOffset=N&itemLimit=M` and its events), and `sluice session show
//! --item-offset N --item-limit M`. A page holds its slice of the items in job order; the
//! item count and the counts by state cover every item.

use serde_json::Value;
use sluice_proto::pb::{self, ItemState, SessionState};
use sluice_tests::{
    Cluster,
    api::{Jobs, SESSION_PATIENCE, create_job, get_session, start_job, wait_stopped},
    cli,
    fixtures::expect_ok,
    http::{HttpClient, next_event},
    jobs::JobBuilder,
};

/// A few hundred sim items: more than a page of the test, a session of seconds.
const ITEMS: usize = 300;

fn page(id: &str, item_offset: u32, item_limit: u32) -> pb::GetSessionRequest {
    pb::GetSessionRequest { session_id: id.to_string(), item_offset, item_limit }
}

/// Counts of `items` by state, as the server is to count them.
fn counted(items: &[pb::ItemStatus]) -> pb::ItemStateCounts {
    let mut counts = pb::ItemStateCounts::default();
    for item in items {
        *match item.state() {
            ItemState::Pending => &mut counts.pending,
            ItemState::Processing => &mut counts.processing,
            ItemState::Success => &mut counts.success,
            ItemState::Warning => &mut counts.warning,
            ItemState::Failed => &mut counts.failed,
            ItemState::Canceled => &mut counts.canceled,
            ItemState::NotProcessed => &mut counts.not_processed,
        } += 1;
    }
    counts
}

fn sum(c: &pb::ItemStateCounts) -> u32 {
    c.pending + c.processing + c.success + c.warning + c.failed + c.canceled + c.not_processed
}

fn names(items: &[pb::ItemStatus]) -> Vec<&str> {
    items.iter().map(|item| item.name.as_str()).collect()
}

/// Every event of a paged `WatchSession` holds the page (the last 10 items, asked as 20 from
/// item 290) and counts that cover every item; the last is STOPPED.
async fn watch_a_page_to_the_end(jobs: &mut Jobs, id: &str) -> pb::Session {
    let request =
        pb::WatchSessionRequest { session_id: id.into(), item_offset: 290, item_limit: 20 };
    let mut stream = expect_ok(jobs.watch_session(request).await, "WatchSession of a page");
    let follow = async {
        let mut last = None;
        while let Some(event) = stream.message().await.expect("the watch goes on") {
            let session = event.session.expect("an event has its session");
            assert_eq!(session.items.len(), 10, "the page is cut at the end");
            assert_eq!(session.items[0].name, "vm-290", "the page starts at its offset");
            let counts = session.item_state_counts.expect("every event counts the items");
            assert_eq!(sum(&counts), ITEMS as u32, "{counts:?}");
            last = Some(session);
        }
        last.expect("at least one event")
    };
    tokio::time::timeout(SESSION_PATIENCE, follow).await.expect("the watch ends with the session")
}

#[tokio::test]
async fn a_session_reads_a_page_at_a_time_with_its_counts_over_grpc_http_and_the_cli() {
    let mut cluster = Cluster::builder().agents(1).slots(8).start().await;
    let mut jobs = cluster.job_client().await;
    let job = JobBuilder::sim("pages", 20).placeholder_vms(ITEMS).build();
    create_job(&mut jobs, job).await;
    let started = start_job(&mut jobs, "pages").await;
    let id = started.id.clone();
    let pending = pb::ItemStateCounts { pending: ITEMS as u32, ..Default::default() };
    assert_eq!(started.item_state_counts, Some(pending), "a new session: all pending");

    // Events while it runs, over gRPC and HTTP alike.
    let http = HttpClient::admin(cluster.coordinator(0)).await;
    let events = format!("/api/v1/sessions/{id}/events?itemOffset=290&itemLimit=20");
    let (reply, mut sse) = http.events(&events).await;
    assert_eq!(reply.status, 200, "{events}");
    let watched = watch_a_page_to_the_end(&mut jobs, &id).await;
    assert_eq!(watched.state(), SessionState::Stopped);
    let mut last = Value::Null;
    while let Some(event) = next_event(&mut sse, SESSION_PATIENCE).await {
        assert_eq!(event.event, "session", "{event:?}");
        let session: Value = serde_json::from_str(&event.data).expect("SessionEvent JSON");
        let session = session["session"].clone();
        assert_eq!(session["items"].as_array().map(Vec::len), Some(10), "{events}");
        assert_eq!(session["items"][0]["name"], "vm-290");
        assert_eq!(session["itemCount"], ITEMS, "the count is every item's");
        last = session;
    }
    assert_eq!(last["state"], "SESSION_STATE_STOPPED", "the stream ends with the session");
    assert_eq!(last["itemStateCounts"]["success"], ITEMS, "{last}");

    // Reads of the ended session: a page is its slice of the whole, the counts are all's.
    let whole = wait_stopped(&jobs, &id).await;
    assert_eq!(whole.items.len(), ITEMS, "no page asked: every item, as before");
    let all = counted(&whole.items);
    assert_eq!((all.success, whole.item_state_counts), (ITEMS as u32, Some(all)));
    let slice = expect_ok(jobs.get_session(page(&id, 100, 50)).await, "GetSession of a page");
    assert_eq!(names(&slice.items), names(&whole.items[100..150]), "items 100-149 in job order");
    assert_eq!(slice.items, whole.items[100..150], "the page's items as the whole has them");
    assert_eq!((slice.item_count, slice.item_state_counts), (ITEMS as u32, Some(all)));
    let tail = expect_ok(jobs.get_session(page(&id, 250, 0)).await, "GetSession to the end");
    assert_eq!(names(&tail.items), names(&whole.items[250..]), "no limit: to the end");
    for offset in [ITEMS as u32, u32::MAX] {
        let none = expect_ok(jobs.get_session(page(&id, offset, 10)).await, "past the end");
        assert!(none.items.is_empty(), "offset {offset}: no items");
        assert_eq!(none.item_state_counts, Some(all), "offset {offset}: the counts alone");
    }
    assert_eq!(get_session(&jobs, &id).await.items.len(), ITEMS);
    let request = pb::ListSessionsRequest { job: "pages".into(), ..Default::default() };
    let listed = expect_ok(jobs.clone().list_sessions(request).await, "ListSessions");
    let counts = listed.sessions.iter().map(|s| (s.id.as_str(), s.item_state_counts));
    assert_eq!(counts.collect::<Vec<_>>(), [(id.as_str(), Some(all))], "an ended session's counts");

    // HTTP: the same page, in either spelling; bad values name their parameter.
    let path = format!("/api/v1/sessions/{id}");
    for query in ["?itemOffset=100&itemLimit=50", "?item_offset=100&item_limit=50"] {
        let reply = http.get(&format!("{path}{query}")).await;
        assert_eq!(reply.status, 200, "{query}: {reply:?}");
        let session = reply.json();
        let items = session["items"].as_array().cloned().unwrap_or_default();
        let listed: Vec<&str> = items.iter().filter_map(|i| i["name"].as_str()).collect();
        assert_eq!(listed, names(&whole.items[100..150]), "{query}");
        assert_eq!(session["itemCount"], ITEMS, "{query}");
        assert_eq!(session["itemStateCounts"]["success"], ITEMS, "{query}");
        assert_eq!(session["itemStateCounts"]["failed"], 0, "{query}: zeros are written");
    }
    let bad = [
        ("?itemLimit=-1", "itemLimit"),
        ("?itemOffset=many", "itemOffset"),
        ("?pageSize=10", "pageSize"),
    ];
    for (query, named) in bad {
        for route in [path.clone(), format!("{path}/events")] {
            let reply = http.get(&format!("{route}{query}")).await;
            assert_eq!((reply.status, reply.error_code().as_str()), (400, "INVALID_ARGUMENT"));
            assert!(reply.body.contains(named), "{route}{query}: {}", reply.body);
        }
    }

    // The CLI: a page, with the counts line, and the whole session by default.
    let show = ["session", "show", &id, "--item-offset", "100", "--item-limit", "2"];
    let (code, out) = cli::as_admin(&mut cluster, &show).await;
    assert_eq!(code, 0, "{out}");
    let field = |name: &str| {
        let line = out.lines().find(|line| line.starts_with(&format!("{name}:")));
        line.map(|line| line[name.len() + 1..].trim().to_string())
    };
    assert_eq!(field("ITEMS"), Some(format!("{ITEMS}: {ITEMS} SUCCESS")), "{out}");
    assert_eq!(field("SHOWN"), Some(format!("items 101-102 of {ITEMS}")), "{out}");
    let rows = out.lines().filter(|line| line.starts_with("vm-")).collect::<Vec<_>>();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(rows[0].starts_with("vm-100 "), "{out}");
    let (code, out) = cli::as_admin(&mut cluster, &["session", "show", &id]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().filter(|line| line.starts_with("vm-")).count(), ITEMS, "{out}");

    // `session watch` of a page: that page's items, the counts of every item.
    let watch = ["session", "watch", &id, "--item-offset", "100", "--item-limit", "2"];
    let (code, out) = cli::as_admin(&mut cluster, &watch).await;
    assert_eq!(code, 0, "{out}");
    let items: Vec<&str> = out.lines().filter(|line| line.contains(" item ")).collect();
    assert_eq!(items.len(), 2, "{out}");
    assert!(items[0].contains(" item vm-100 SUCCESS"), "{out}");
    assert!(out.contains(&format!("ITEMS:     {ITEMS} SUCCESS")), "{out}");
}
