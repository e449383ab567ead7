//! The controls' transitions over time, with tokio's clock paused.

use super::*;
use std::time::Duration;

fn control() -> Arc<Control> {
    let settings = SwitchoverConfig::default();
    Control::new(Arc::default(), settings, true, Arc::new(Metrics::new()))
}

const HOLD_LIMIT: Duration = Duration::from_secs(30);

/// Lets spawned timers run after the clock moved.
async fn advance(d: Duration) {
    tokio::time::advance(d).await;
    tokio::task::yield_now().await;
}

#[tokio::test(start_paused = true)]
async fn a_second_hold_is_the_same_hold_and_ends_with_it() {
    let c = control();
    let mut rx = c.watch();
    c.hold();
    assert!(rx.has_changed().unwrap());
    rx.borrow_and_update();
    advance(Duration::from_secs(10)).await;
    c.hold();
    assert!(!rx.has_changed().unwrap(), "holding while held changes nothing");
    assert!(
        c.held_for().unwrap() >= Duration::from_secs(10),
        "the first hold's start stands"
    );
    advance(HOLD_LIMIT - Duration::from_secs(10)).await;
    assert!(!c.is_held(), "the first hold's limit ends it");
}

#[tokio::test(start_paused = true)]
async fn a_hold_timer_releases_only_the_hold_it_was_started_for() {
    let c = control();
    c.hold();
    advance(Duration::from_secs(20)).await;
    assert!(c.resume().is_some());
    c.hold();
    advance(Duration::from_secs(15)).await;
    assert!(
        c.is_held(),
        "the first hold's timer fired, and must leave the second hold alone"
    );
    advance(Duration::from_secs(15)).await;
    assert!(!c.is_held(), "the second hold's own timer ends it");
}

#[tokio::test(start_paused = true)]
async fn resume_reports_the_hold_and_opens_the_gate_for_waiters() {
    let c = control();
    assert_eq!(c.resume(), None, "nothing to resume");
    c.hold();
    let waiter = tokio::spawn({
        let c = c.clone();
        async move { c.wait_open().await }
    });
    advance(Duration::from_millis(1500)).await;
    assert!(!waiter.is_finished());
    assert_eq!(c.resume(), Some(Duration::from_millis(1500)));
    waiter.await.unwrap();
    assert_eq!(c.cutover().gate, Gate::Open);
}

#[tokio::test(start_paused = true)]
async fn flip_requires_a_hold() {
    let c = control();
    let wait = Duration::from_secs(1);
    assert_eq!(c.flip(Side::Green, wait).await, Err(ControlError::NotHeld));
    assert_eq!(c.route().epoch, 0);
    c.hold();
    let report = c.flip(Side::Green, wait).await.unwrap();
    assert_eq!((report.target, report.epoch), (Side::Green, 1));
    c.resume();
    assert_eq!(c.flip(Side::Blue, wait).await, Err(ControlError::NotHeld));
    assert_eq!(
        c.route(),
        Route {
            target: Side::Green,
            epoch: 1
        }
    );
}

#[tokio::test(start_paused = true)]
async fn an_unused_standby_is_dropped_after_the_hold_limit() {
    let c = control();
    c.prepare(Side::Green, Duration::ZERO).await.unwrap();
    assert_eq!(c.cutover().standby, Some(Side::Green));
    advance(HOLD_LIMIT).await;
    assert_eq!(c.cutover().standby, None);
}
