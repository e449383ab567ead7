//! Counting failed guesses per client address (wrong admin tokens, unknown cancel
//! keys): an address over its budget within a window is refused unread until the
//! window ends, whatever it sends, so guessing gets nowhere; every other address
//! is untouched.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Addresses tracked at most; when full, ended windows are forgotten first.
const MAX_TRACKED: usize = 10_000;

/// Failed guesses per address in the current window.
#[derive(Debug)]
pub(crate) struct Guesses {
    budget: u32,
    window: Duration,
    seen: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Guesses {
    /// `budget` failed guesses per `window` and address.
    pub(crate) fn new(budget: u32, window: Duration) -> Guesses {
        Guesses {
            budget,
            window,
            seen: Mutex::default(),
        }
    }

    /// Whether `peer` has used up its budget in this window.
    pub(crate) fn over(&self, peer: IpAddr) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        match seen.get_mut(&peer) {
            Some(entry) => self.current(entry).0 >= self.budget,
            None => false,
        }
    }

    /// Counts a failed guess of `peer`'s; `true` the moment it uses up its budget
    /// (to log that once).
    pub(crate) fn failed(&self, peer: IpAddr) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if seen.len() >= MAX_TRACKED && !seen.contains_key(&peer) {
            let window = self.window;
            seen.retain(|_, (_, since)| now.duration_since(*since) < window);
            if seen.len() >= MAX_TRACKED {
                return false;
            }
        }
        let entry = seen.entry(peer).or_insert((0, now));
        let count = &mut self.current(entry).0;
        *count += 1;
        *count == self.budget
    }

    /// The entry, started afresh if its window has ended.
    fn current<'a>(&self, entry: &'a mut (u32, Instant)) -> &'a mut (u32, Instant) {
        if entry.1.elapsed() >= self.window {
            *entry = (0, Instant::now());
        }
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_over_its_budget_is_refused_for_the_window_and_no_other() {
        let guesses = Guesses::new(3, Duration::from_millis(200));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(!guesses.failed(a) && !guesses.failed(a));
        assert!(!guesses.over(a));
        assert!(guesses.failed(a), "the third uses the budget up, once");
        assert!(guesses.over(a) && !guesses.over(b));
        assert!(!guesses.failed(a), "said once");
        std::thread::sleep(Duration::from_millis(250));
        assert!(!guesses.over(a), "a new window");
    }
}
