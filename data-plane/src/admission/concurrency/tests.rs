//! The limiter in paused time: the static limit, queue order, both drop strategies, the
//! longest wait, cancelled waiters, and priority shedding.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::*;

fn policy(limit: u32, max_queue: u32, drop_strategy: QueueDropStrategy) -> ConcurrencyPolicy {
    ConcurrencyPolicy {
        kind: ConcurrencyLimitKind::Static,
        limit,
        max_queue,
        max_queue_wait_ms: 1_000,
        target_queue_wait_ms: 100,
        drop_strategy,
        ..Default::default()
    }
}

fn limiter(policy: ConcurrencyPolicy) -> Arc<ConcurrencyLimiter> {
    ConcurrencyLimiter::new("demo.v1.Echo", &policy).expect("a limit")
}

fn priority(value: u8) -> Priority {
    Priority::new(value).unwrap()
}

/// A call that queues: `name` and its result go to `done` once it has a verdict; an
/// admitted call holds its permit until `hold` is over.
fn call(
    limiter: &Arc<ConcurrencyLimiter>,
    name: &'static str,
    priority: Priority,
    hold: Duration,
    done: &mpsc::UnboundedSender<(&'static str, Result<(), RefusalReason>)>,
) -> JoinHandle<()> {
    let (limiter, done) = (Arc::clone(limiter), done.clone());
    tokio::spawn(async move {
        match limiter.acquire(priority, None).await {
            Ok(permit) => {
                done.send((name, Ok(()))).unwrap();
                tokio::time::sleep(hold).await;
                drop(permit);
            }
            Err(refusal) => done.send((name, Err(refusal.reason))).unwrap(),
        }
    })
}

/// Lets spawned calls run up to their first wait.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn drain(
    done: &mut mpsc::UnboundedReceiver<(&'static str, Result<(), RefusalReason>)>,
) -> Vec<(&'static str, Result<(), RefusalReason>)> {
    std::iter::from_fn(|| done.try_recv().ok()).collect()
}

#[tokio::test(start_paused = true)]
async fn calls_over_the_limit_queue_and_are_served_in_order() {
    let limiter = limiter(policy(2, 3, QueueDropStrategy::RejectNew));
    let first = limiter.acquire(Priority::NORMAL, None).await.unwrap();
    let second = limiter.acquire(Priority::NORMAL, None).await.unwrap();
    assert_eq!(limiter.in_flight(), 2);

    let (tx, mut done) = mpsc::unbounded_channel();
    for name in ["q1", "q2", "q3"] {
        call(
            &limiter,
            name,
            Priority::NORMAL,
            Duration::from_millis(10),
            &tx,
        );
        settle().await;
    }
    assert_eq!(limiter.queued(), 3);
    call(&limiter, "q4", Priority::NORMAL, Duration::ZERO, &tx);
    settle().await;
    assert_eq!(
        drain(&mut done),
        [("q4", Err(RefusalReason::QueueFull))],
        "limit 2 + queue 3: the sixth call is refused"
    );

    drop(first);
    settle().await;
    assert_eq!(
        drain(&mut done),
        [("q1", Ok(()))],
        "the head of the queue goes first"
    );
    drop(second);
    settle().await;
    assert_eq!(drain(&mut done), [("q2", Ok(()))]);
    assert_eq!(limiter.in_flight(), 2, "each release handed its slot on");

    tokio::time::sleep(Duration::from_millis(10)).await;
    settle().await;
    assert_eq!(drain(&mut done), [("q3", Ok(()))]);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!((limiter.in_flight(), limiter.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn without_a_queue_a_call_over_the_limit_is_refused_at_once() {
    let limiter = limiter(policy(1, 0, QueueDropStrategy::RejectNew));
    let _held = limiter.acquire(Priority::HIGHEST, None).await.unwrap();
    let refusal = limiter.acquire(Priority::HIGHEST, None).await.unwrap_err();
    assert_eq!(refusal.reason, RefusalReason::ConcurrencyLimit);
    assert!(
        refusal.to_string().contains("demo.v1.Echo")
            && refusal.to_string().contains("1 calls in flight"),
        "{refusal}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_queued_call_gives_up_after_the_longest_wait_or_its_deadline() {
    let limiter = limiter(policy(1, 5, QueueDropStrategy::RejectNew));
    let _held = limiter.acquire(Priority::NORMAL, None).await.unwrap();
    let started = Instant::now();
    let refusal = limiter.acquire(Priority::NORMAL, None).await.unwrap_err();
    assert_eq!(refusal.reason, RefusalReason::QueueTimeout);
    assert_eq!(started.elapsed(), Duration::from_millis(1_000));
    assert_eq!(limiter.queued(), 0, "it left the queue");

    let started = Instant::now();
    let deadline = Some(started + Duration::from_millis(300));
    let refusal = limiter
        .acquire(Priority::NORMAL, deadline)
        .await
        .unwrap_err();
    assert_eq!(refusal.reason, RefusalReason::QueueTimeout);
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(300),
        "the deadline first"
    );
}

#[tokio::test(start_paused = true)]
async fn drop_oldest_makes_room_for_the_newcomer() {
    let limiter = limiter(policy(1, 2, QueueDropStrategy::DropOldest));
    let held = limiter.acquire(Priority::NORMAL, None).await.unwrap();
    let (tx, mut done) = mpsc::unbounded_channel();
    for name in ["old", "middle", "new"] {
        call(&limiter, name, Priority::NORMAL, Duration::ZERO, &tx);
        settle().await;
    }
    assert_eq!(drain(&mut done), [("old", Err(RefusalReason::QueueFull))]);
    assert_eq!(limiter.queued(), 2);
    drop(held);
    settle().await;
    assert_eq!(drain(&mut done), [("middle", Ok(())), ("new", Ok(()))]);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_call_leaves_the_queue_and_its_slot_goes_on() {
    let limiter = limiter(policy(1, 3, QueueDropStrategy::RejectNew));
    let held = limiter.acquire(Priority::NORMAL, None).await.unwrap();
    let (tx, mut done) = mpsc::unbounded_channel();
    let gone = call(&limiter, "gone", Priority::NORMAL, Duration::ZERO, &tx);
    settle().await;
    call(
        &limiter,
        "next",
        Priority::NORMAL,
        Duration::from_millis(5),
        &tx,
    );
    settle().await;
    gone.abort();
    settle().await;
    assert_eq!(limiter.queued(), 1, "the cancelled call left");
    drop(held);
    settle().await;
    assert_eq!(drain(&mut done), [("next", Ok(()))]);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(limiter.in_flight(), 0, "no slot leaked");
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_sheds_its_lowest_priority_for_a_higher_one() {
    let limiter = limiter(policy(1, 3, QueueDropStrategy::RejectNew));
    let held = limiter.acquire(Priority::NORMAL, None).await.unwrap();
    let (tx, mut done) = mpsc::unbounded_channel();
    for (name, p) in [("low-a", 0), ("mid", 5), ("low-b", 0)] {
        call(&limiter, name, priority(p), Duration::ZERO, &tx);
        settle().await;
    }
    call(&limiter, "high", Priority::HIGHEST, Duration::ZERO, &tx);
    settle().await;
    assert_eq!(
        drain(&mut done),
        [("low-b", Err(RefusalReason::ShedPriority))],
        "reject_new sheds the newest of the lowest priority"
    );
    call(&limiter, "low-c", Priority::LOWEST, Duration::ZERO, &tx);
    settle().await;
    assert_eq!(
        drain(&mut done),
        [("low-c", Err(RefusalReason::QueueFull))],
        "nobody is lower than a new priority-0 call: it is refused"
    );
    let limiter_drop_oldest = super::ConcurrencyLimiter::new(
        "demo.v1.Echo",
        &policy(1, 1, QueueDropStrategy::DropOldest),
    )
    .unwrap();
    let _held_too = limiter_drop_oldest
        .acquire(Priority::NORMAL, None)
        .await
        .unwrap();
    call(
        &limiter_drop_oldest,
        "mid-queued",
        Priority::NORMAL,
        Duration::ZERO,
        &tx,
    );
    settle().await;
    call(
        &limiter_drop_oldest,
        "lower",
        Priority::LOWEST,
        Duration::ZERO,
        &tx,
    );
    settle().await;
    assert_eq!(
        drain(&mut done),
        [("lower", Err(RefusalReason::ShedPriority))],
        "drop_oldest drops no higher priority for a lower one"
    );
    drop(held);
    settle().await;
    assert_eq!(
        drain(&mut done),
        [("low-a", Ok(())), ("mid", Ok(())), ("high", Ok(()))],
        "the survivors are served in arrival order"
    );
}

#[tokio::test(start_paused = true)]
async fn while_the_queue_wait_is_over_target_low_priorities_are_refused_first() {
    let limiter = limiter(policy(1, 10, QueueDropStrategy::RejectNew));
    let held = limiter.acquire(Priority::NORMAL, None).await.unwrap();
    let (tx, mut done) = mpsc::unbounded_channel();
    call(
        &limiter,
        "high-waiting",
        Priority::HIGHEST,
        Duration::ZERO,
        &tx,
    );
    settle().await;
    call(&limiter, "low-early", priority(2), Duration::ZERO, &tx);
    settle().await;
    assert!(
        drain(&mut done).is_empty(),
        "under the target wait: both queue"
    );

    tokio::time::sleep(Duration::from_millis(150)).await;
    call(&limiter, "low-late", priority(2), Duration::ZERO, &tx);
    call(
        &limiter,
        "high-late",
        Priority::HIGHEST,
        Duration::ZERO,
        &tx,
    );
    settle().await;
    assert_eq!(
        drain(&mut done),
        [("low-late", Err(RefusalReason::ShedPriority))],
        "the oldest has waited 150 ms > 100 ms with a priority-9 call waiting"
    );
    assert_eq!(limiter.queued(), 3);
    drop(held);
    settle().await;
    assert_eq!(drain(&mut done)[0], ("high-waiting", Ok(())));
}
