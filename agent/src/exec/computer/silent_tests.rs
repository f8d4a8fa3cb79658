//! A computer backup on an agent past its silent moment publishes no restore point.

use std::error::Error;
use std::time::Duration;

use sluice_proto::pb;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::exec::{self, CancelSignal};
use crate::liveness::Liveness;
use crate::repository::RepoPaths;

/// The agent went silent during the backup (a TTL of zero: silent from the confirmation
/// on), but nothing cancelled it before COMMIT: the backup reaches COMMIT, is refused there,
/// ends CANCELED with the give-up's message and leaves neither a restore point nor its
/// partial folder.
#[tokio::test]
async fn a_backup_past_the_silent_moment_does_not_publish_its_restore_point()
-> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let (src, repo) = (dir.path().join("src"), dir.path().join("repo"));
    std::fs::create_dir_all(&src)?;
    std::fs::write(src.join("a.txt"), b"data\n")?;
    let mut liveness = Liveness::new("a1".into(), Duration::ZERO);
    liveness.confirm(Instant::now(), 1);
    let mut ctx = super::test_context("s1", &[&src], &repo);
    ctx.cancel = CancelSignal::watching(watch::channel(liveness).1);

    let executed = exec::execute(&mut ctx).await;
    assert_eq!(executed.state(), pb::ItemState::Canceled, "refused at COMMIT: {executed:?}");
    let outcome = ctx.cancel.settle(executed);

    assert_eq!(outcome.state(), pb::ItemState::Canceled, "{outcome:?}");
    assert_eq!(outcome.cancel_reason(), pb::CancelReason::Silent);
    assert_eq!(
        outcome.message,
        "agent silent past its heartbeat TTL of 0s; its tasks were given up"
    );
    let paths = RepoPaths::of_task(&ctx.spec, &ctx.id);
    assert!(!paths.final_dir.exists(), "no restore point");
    assert!(!paths.partial.exists(), "no partial folder");
    Ok(())
}
