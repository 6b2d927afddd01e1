//! What `state.watch` and `state.subscribe` serve of a node's eventual machines: the
//! changes this node made or merged, numbered in the order it did them. The numbers
//! are this node's own (another node numbers the same changes differently). Each start
//! of the node begins a new range of numbers, `boot << 32` on (`boot` is stored and
//! counted up at each start), so numbers keep increasing across restarts and a number
//! is never given twice, even to a change lost in a crash. The newest [`KEPT`] changes
//! are remembered in memory; a watcher asking from before them (or from before a
//! restart) is told where to start again.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::StateError;
use crate::host::Change;

/// How many recent changes a node remembers for watchers.
pub const KEPT: usize = 65_536;

struct Log {
    /// The number of the last change.
    last: u64,
    recent: VecDeque<Change>,
}

/// The numbered changes of one node's eventual instances.
pub(super) struct Feed {
    log: Mutex<Log>,
    /// The number of the last change, for waiting watchers.
    tick: tokio::sync::watch::Sender<u64>,
}

impl Feed {
    /// The feed of the node's start number `boot` (1 on its first start).
    pub(super) fn new(boot: u64) -> Self {
        Self::starting_after(boot << 32)
    }

    /// A feed whose first change is numbered `last + 1`.
    fn starting_after(last: u64) -> Self {
        Self {
            log: Mutex::new(Log {
                last,
                recent: VecDeque::new(),
            }),
            tick: tokio::sync::watch::channel(last).0,
        }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The number of the last change.
    pub(super) fn last(&self) -> u64 {
        self.log().last
    }

    /// Records changes numbered from `last() + 1` on, in order.
    pub(super) fn record(&self, changes: impl IntoIterator<Item = Change>) {
        let last = {
            let mut log = self.log();
            for mut change in changes {
                log.last += 1;
                change.index = log.last;
                if log.recent.len() == KEPT {
                    log.recent.pop_front();
                }
                log.recent.push_back(change);
            }
            log.last
        };
        self.tick.send_replace(last);
    }

    /// Changes numbered after `after` (0: the oldest kept on), oldest first, at most
    /// `limit`, waiting up to `wait` for the first; refused when this node no longer
    /// remembers the ones right after `after` (they were more than [`KEPT`] changes ago,
    /// or before a restart) and when `after` is a number this node has not given.
    pub(super) async fn after(
        &self,
        after: u64,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<Change>, StateError> {
        let until = Instant::now() + wait;
        let mut tick = self.tick.subscribe();
        loop {
            {
                let log = self.log();
                let floor = log.recent.front().map_or(log.last, |c| c.index - 1);
                let after = if after == 0 { floor } else { after };
                if after < floor {
                    return Err(StateError::InvalidInput(format!(
                        "eventual changes up to {floor} are not kept on this node: watch from {floor}"
                    )));
                }
                if after > log.last {
                    return Err(StateError::InvalidInput(format!(
                        "this node's eventual changes go up to {} ({after} is not one of its numbers: each node numbers its own): watch from {}",
                        log.last, log.last
                    )));
                }
                let skip = (after - floor) as usize;
                let out: Vec<Change> = log.recent.iter().skip(skip).take(limit).cloned().collect();
                if !out.is_empty() || Instant::now() >= until {
                    return Ok(out);
                }
                tick.mark_unchanged();
            }
            if tokio::time::timeout_at(until.into(), tick.changed())
                .await
                .is_err()
            {
                return Ok(Vec::new());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change(instance: &str) -> Change {
        Change {
            index: 0,
            ts_us: 1,
            instance: instance.into(),
            event: json!({"kind": "fired"}),
            integrity: String::new(),
        }
    }

    #[tokio::test]
    async fn watchers_get_changes_in_order_wait_for_new_ones_and_are_told_what_is_gone() {
        let feed = Feed::starting_after(10);
        // Nothing yet: waits, then answers nothing.
        let none = feed
            .after(10, 100, Duration::from_millis(20))
            .await
            .unwrap();
        assert!(none.is_empty());
        feed.record([change("a"), change("b")]);
        let got = feed.after(10, 100, Duration::ZERO).await.unwrap();
        let numbered: Vec<(u64, &str)> = got.iter().map(|c| (c.index, &*c.instance)).collect();
        assert_eq!(numbered, [(11, "a"), (12, "b")]);
        assert_eq!(feed.after(11, 100, Duration::ZERO).await.unwrap().len(), 1);
        assert_eq!(feed.after(10, 1, Duration::ZERO).await.unwrap().len(), 1);
        // Before the first number kept: refused with where to start; 0 is the oldest kept.
        let gone = feed.after(3, 100, Duration::ZERO).await.unwrap_err();
        assert!(gone.to_string().contains("up to 10"), "{gone}");
        assert_eq!(feed.after(0, 100, Duration::ZERO).await.unwrap().len(), 2);
        // A number not given yet (another node's, or from before a crash): refused.
        let ahead = feed.after(13, 100, Duration::ZERO).await.unwrap_err();
        assert!(ahead.to_string().contains("go up to 12"), "{ahead}");
        // Each start numbers from a range of its own.
        assert_eq!(Feed::new(2).last(), 2 << 32);
        // A waiting watcher wakes for a change recorded while it waits.
        let feed = std::sync::Arc::new(feed);
        let waiter = tokio::spawn({
            let feed = feed.clone();
            async move { feed.after(12, 100, Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        feed.record([change("c")]);
        let woke = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the change")
            .unwrap()
            .unwrap();
        assert_eq!(woke.len(), 1);
        assert_eq!((woke[0].index, &*woke[0].instance), (13, "c"));
    }

    #[tokio::test]
    async fn only_the_newest_changes_are_kept() {
        let feed = Feed::starting_after(0);
        feed.record((0..KEPT + 5).map(|_| change("x")));
        let gone = feed.after(4, 1, Duration::ZERO).await.unwrap_err();
        assert!(gone.to_string().contains("up to 5"), "{gone}");
        let first = feed.after(5, 1, Duration::ZERO).await.unwrap();
        assert_eq!(first[0].index, 6);
    }
}
