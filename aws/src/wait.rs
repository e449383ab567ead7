//! Waiting for RDS: our own poll loop with backoff and a deadline, on a clock the
//! tests control. The SDK's waiters poll every 30 s at the least and cannot be
//! told that a cluster which says `available` right after a modify is not done
//! until its engine version changed.

use crate::AwsError;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// Time as a wait sees it.
pub trait Clock: Send + Sync {
    /// Time since some fixed start.
    fn elapsed(&self) -> Duration;
    /// Waits `d`.
    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// The real clock.
pub struct SystemClock(std::time::Instant);

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock(std::time::Instant::now())
    }
}

impl Clock for SystemClock {
    fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }

    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// How often to poll: `first`, doubling up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The first pause.
    pub first: Duration,
    /// The longest pause.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_secs(2),
            max: Duration::from_secs(30),
        }
    }
}

/// One look at what is awaited.
#[derive(Debug, PartialEq, Eq)]
pub enum Poll<T> {
    /// Done.
    Ready(T),
    /// Not yet: the state now, for progress and the timeout's message.
    Pending(String),
}

/// Polls until `poll` is ready, pausing with `backoff`, for at most `limit`.
/// An error from `poll` (a failed state, a failed call) ends the wait at once.
pub async fn wait_until<T, F, Fut>(
    clock: &dyn Clock,
    what: &str,
    limit: Duration,
    backoff: Backoff,
    mut poll: F,
) -> Result<T, AwsError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Poll<T>, AwsError>>,
{
    let start = clock.elapsed();
    let mut pause = backoff.first;
    let mut last = String::from("unknown");
    loop {
        match poll().await? {
            Poll::Ready(t) => return Ok(t),
            Poll::Pending(state) => {
                if state != last {
                    tracing::info!("{what}: {state}");
                }
                last = state;
            }
        }
        let waited = clock.elapsed() - start;
        if waited + pause > limit {
            return Err(AwsError::Timeout {
                what: what.to_owned(),
                state: last,
                waited,
                fix: "look at it in the RDS console or with `aws rds describe-db-clusters`; re-running continues where this stopped",
            });
        }
        clock.sleep(pause).await;
        pause = (pause * 2).min(backoff.max);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A clock that moves only when slept on.
    #[derive(Default)]
    pub(crate) struct FakeClock {
        pub(crate) now: Mutex<Duration>,
        pub(crate) sleeps: Mutex<Vec<Duration>>,
    }

    impl Clock for FakeClock {
        fn elapsed(&self) -> Duration {
            *self.now.lock().unwrap()
        }

        fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
            *self.now.lock().unwrap() += d;
            self.sleeps.lock().unwrap().push(d);
            Box::pin(std::future::ready(()))
        }
    }

    #[tokio::test]
    async fn polls_with_backoff_until_ready_without_really_sleeping() {
        let clock = FakeClock::default();
        let mut states = vec!["creating", "backing-up", "available"].into_iter();
        let started = std::time::Instant::now();
        let got = wait_until(&clock, "green", Duration::from_secs(3600), Backoff::default(), || {
            let s = states.next().unwrap();
            async move {
                Ok(match s {
                    "available" => Poll::Ready(s),
                    other => Poll::Pending(other.to_owned()),
                })
            }
        })
        .await
        .unwrap();
        assert_eq!(got, "available");
        assert_eq!(
            *clock.sleeps.lock().unwrap(),
            [Duration::from_secs(2), Duration::from_secs(4)]
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn the_deadline_names_the_last_state_and_pauses_stop_growing() {
        let clock = FakeClock::default();
        let e = wait_until::<(), _, _>(
            &clock,
            "the upgrade of green",
            Duration::from_secs(600),
            Backoff::default(),
            || async { Ok(Poll::Pending("upgrading".to_owned())) },
        )
        .await
        .unwrap_err();
        assert!(
            e.to_string().starts_with("the upgrade of green: still upgrading after"),
            "{e}"
        );
        let sleeps = clock.sleeps.lock().unwrap();
        assert!(sleeps.iter().all(|d| *d <= Duration::from_secs(30)));
        assert!(sleeps.iter().sum::<Duration>() <= Duration::from_secs(600));
        assert_eq!(sleeps.last(), Some(&Duration::from_secs(30)));
    }

    #[tokio::test]
    async fn an_error_ends_the_wait_at_once() {
        let clock = FakeClock::default();
        let e = wait_until::<(), _, _>(
            &clock,
            "green",
            Duration::from_secs(600),
            Backoff::default(),
            || async {
                Err(AwsError::refused(
                    "green is incompatible-parameters",
                    "fix its parameter group",
                ))
            },
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("incompatible-parameters"));
        assert!(clock.sleeps.lock().unwrap().is_empty());
    }
}
