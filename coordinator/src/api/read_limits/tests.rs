use hyper::body::{Bytes, Frame};

use super::*;
use crate::api::callers::token;

/// A caller's reads past its cap are refused at once, naming the cap; another caller's are
/// admitted, and an answered read frees its caller's place.
#[tokio::test]
async fn each_caller_has_a_cap_on_its_large_reads() {
    let limits = ReadLimits::new(MAX_READS_PER_CALLER);
    let viewer = token("viewer");
    let mut held = Vec::new();
    for _ in 0..MAX_READS_PER_CALLER {
        held.push(limits.admit(Some(&viewer), None).await.expect("within the cap"));
    }
    let refused = limits.admit(Some(&viewer), None).await.expect_err("one too many");
    assert!(matches!(refused, Error::TooManyReads(_)), "{refused}");
    assert!(refused.to_string().starts_with("token:viewer has 8 large reads"), "{refused}");
    held.pop();
    held.push(limits.admit(Some(&viewer), None).await.expect("a place freed"));
    drop(held);
    assert_eq!(limits.admitted.held(), (0, 0), "every place given back");
}

/// Past the reads that run at once, the next waits its turn (it is not refused) and runs
/// when one ends.
#[tokio::test]
async fn a_read_past_those_running_waits_for_its_turn() {
    let limits = ReadLimits::new(1);
    let first = limits.admit(Some(&token("a")), None).await.expect("runs at once");
    let second = {
        let limits = limits.clone();
        tokio::spawn(async move { limits.admit(Some(&token("b")), None).await.map(|_| ()) })
    };
    while limits.admitted.held().0 < 2 {
        tokio::task::yield_now().await;
    }
    assert_eq!(limits.running.available_permits(), 0, "the first holds the only turn");
    assert!(!second.is_finished(), "the second read waits while the first runs");
    drop(first);
    second.await.expect("joined").expect("its turn came");
}

/// The coordinator refuses reads past the ones it keeps running or waiting.
#[tokio::test]
async fn the_coordinator_caps_the_reads_it_keeps_waiting() {
    let limits = ReadLimits::new(MAX_READS_WAITING);
    let mut held = Vec::new();
    for n in 0..MAX_READS_WAITING {
        let caller = token(&format!("caller-{}", n / MAX_READS_PER_CALLER));
        held.push(limits.admit(Some(&caller), None).await.expect("within the caps"));
    }
    let full = limits.admit(Some(&token("late")), None).await.expect_err("the coordinator's cap");
    assert!(full.to_string().contains("256 large reads running or waiting"), "{full}");
}

/// A read's turn is held by its answer's body until the answer is made, and its place until
/// what was made is sent (dropped): answers made but not sent are what the cap bounds.
#[tokio::test]
async fn an_answer_holds_its_turn_until_it_is_made_and_its_place_until_it_is_sent() {
    use http_body_util::{BodyExt, Full};

    let limits = ReadLimits::new(1);
    let turn = limits.admit(Some(&token("a")), None).await.expect("runs at once");
    let body = HeldBody::new(Full::new(Bytes::from_static(b"answer")), turn, None);
    assert_eq!(limits.running.available_permits(), 0, "held while the answer waits to go");
    let sent = body.collect().await.expect("the answer").to_bytes();
    assert_eq!(&sent[..], b"answer");
    assert_eq!(limits.running.available_permits(), 1, "given back once it is made");
    assert_eq!(limits.admitted.held(), (1, 1), "the place, while the answer is in memory");
    drop(sent);
    assert_eq!(limits.admitted.held(), (0, 0));
}

/// An answer its client does not read gives its turn back after a while (one stalled client
/// must not hold up every large read), but not its caller's place: the answer is still in
/// memory, so the caller's reads past its cap are refused until it is dropped.
#[tokio::test(start_paused = true)]
async fn an_answer_not_read_gives_its_turn_back_and_keeps_its_place() {
    use http_body_util::Full;

    let limits = ReadLimits::new(1);
    let a = token("a");
    let turn = limits.admit(Some(&a), None).await.expect("runs at once");
    let unread = HeldBody::new(Full::new(Bytes::from_static(b"answer")), turn, None);
    let next = limits.admit(Some(&token("b")), None).await.expect("its turn comes");
    drop(next);
    assert_eq!(limits.admitted.held(), (1, 1), "the unread answer keeps its place");
    // The caller's other places, taken without a turn (there is one, and it is free).
    let mut more = Vec::new();
    for _ in 1..MAX_READS_PER_CALLER {
        more.push(limits.admitted.take(Some(&a), None).expect("within the cap"));
    }
    let refused = limits.admit(Some(&a), None).await.expect_err("the unread answer counts");
    assert!(matches!(refused, Error::TooManyReads(_)), "{refused}");
    drop(unread);
    let admitted = limits.admit(Some(&a), None).await;
    admitted.expect("the dropped answer's place");
}

/// A large answer goes out in slices of at most `SLICE`, in order and whole; its turn comes
/// back once the last slice is made, and its place once every slice handed on is dropped.
#[tokio::test]
async fn a_large_answer_goes_out_in_slices_that_keep_its_place() {
    use http_body_util::{BodyExt, Full};

    let limits = ReadLimits::new(1);
    let turn = limits.admit(Some(&token("a")), None).await.expect("runs at once");
    let answer: Bytes = (0..3 * held::SLICE + 5).map(|n| (n % 251) as u8).collect();
    let mut body = HeldBody::new(Full::new(answer.clone()), turn, None);
    let mut slices = Vec::new();
    for _ in 0..4 {
        let frame = body.frame().await.expect("a frame").expect("no error");
        let slice = frame.into_data().expect("data");
        assert!(slice.len() <= held::SLICE, "a slice of {} bytes", slice.len());
        let made = limits.running.available_permits() == 1;
        assert!(made, "the turn comes back once the answer's one data frame is made");
        slices.push(slice);
    }
    assert!(body.frame().await.is_none(), "no more");
    assert_eq!(slices.concat(), answer.to_vec(), "whole and in order");
    drop(body);
    assert_eq!(limits.admitted.held(), (1, 1), "slices not yet sent keep the place");
    drop(slices);
    assert_eq!(limits.admitted.held(), (0, 0), "every slice gone: the place is back");
}

/// tonic's encoding of an answer (and an HTTP handler's stream) ends only when polled after
/// its one data frame: the turn came back only once the client had read nearly all of it.
#[tokio::test]
async fn the_turn_comes_back_with_the_answers_data_not_with_its_end() {
    use http_body_util::{BodyExt, StreamBody};

    let limits = ReadLimits::new(1);
    let turn = limits.admit(Some(&token("a")), None).await.expect("runs at once");
    let answer = Bytes::from(vec![7u8; 2 * held::SLICE]);
    let frames = [Frame::data(answer), Frame::trailers(http::HeaderMap::new())];
    let stream = futures::stream::iter(frames.map(Ok::<_, std::convert::Infallible>));
    let mut body = HeldBody::new(StreamBody::new(stream), turn, None);
    let first = body.frame().await.expect("a frame").expect("no error");
    assert!(first.is_data());
    assert_eq!(limits.running.available_permits(), 1, "made: the next read may run");
    assert_eq!(limits.admitted.held(), (1, 1), "the place stays while slices are unsent");
}

mod grpc;
