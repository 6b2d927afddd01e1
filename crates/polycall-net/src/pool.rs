//! Connection pooling for a [`Channel`](crate::Channel): N connections to one endpoint,
//! idle connections closed, old ones retired.
//!
//! A [`Channel`](crate::Channel) keeps [`PoolConfig::connections`] slots. Each call goes
//! to the live connection with the fewest calls in flight; an empty slot is connected
//! when every live connection is busy (or none is live), with exponential backoff after
//! failed connects.
//!
//! A background reaper (only started when [`PoolConfig::idle_timeout`] or
//! [`PoolConfig::max_lifetime`] is set) looks at the slots a few times per timeout:
//!
//! - a connection with no call in flight and none started for `idle_timeout` is closed
//!   (gracefully); its slot is reconnected on demand by a later call;
//! - a connection older than `max_lifetime` (and not idle) is retired: it leaves its
//!   slot, so no new call is sent on it, and is told to go away, so it closes once its
//!   calls in flight are answered; a new connection is opened in its slot at once.
//!   Lifetimes are shortened by up to 5 % at random, so connections opened together are
//!   not all replaced together.
//!
//! The reaper holds only a weak reference to the channel: dropping the last clone of
//! the channel stops it (and closes the connections).
//!
//! A call is handed to its connection while the slot is locked, and the reaper only
//! retires a connection under the same lock: a call is never sent on a connection after
//! its go-away, so retiring never fails a call.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use polycall_core::{Code, Status};
use rand::Rng;
use tokio::sync::{Mutex, MutexGuard};
use tokio::time::Instant;

use crate::connection::ConnectionHandle;

/// How a [`Channel`](crate::Channel) pools its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolConfig {
    /// Connections kept to the endpoint (0 is read as 1); calls go to the least loaded.
    pub connections: usize,
    /// Close a connection that had no call for this long; the next call that needs it
    /// reopens it. `None` keeps connections open. Leave it `None` on channels that serve
    /// calls from the peer (a provider's), whose incoming calls do not count as use.
    pub idle_timeout: Option<Duration>,
    /// Retire a connection older than this: no new calls are sent on it, its calls in
    /// flight finish, and a new connection replaces it. `None` keeps connections for
    /// as long as they work.
    pub max_lifetime: Option<Duration>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            connections: 1,
            idle_timeout: None,
            max_lifetime: None,
        }
    }
}

impl PoolConfig {
    /// How often the reaper looks at the slots: a quarter of the shorter timeout,
    /// between 10 ms and 1 s. `None` when there is nothing to reap.
    pub fn reap_interval(&self) -> Option<Duration> {
        let shortest = match (self.idle_timeout, self.max_lifetime) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return None,
        };
        Some((shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)))
    }

    /// Sets the connections kept to the endpoint (0 is read as 1); calls go to the least
    /// loaded.
    pub fn connections(mut self, connections: usize) -> Self {
        self.connections = connections;
        self
    }

    /// Sets how long a connection may have no call before it is closed (the next call that
    /// needs it reopens it).
    pub fn idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = Some(idle_timeout);
        self
    }

    /// Sets the age at which a connection is retired and replaced by a new one.
    pub fn max_lifetime(mut self, max_lifetime: Duration) -> Self {
        self.max_lifetime = Some(max_lifetime);
        self
    }
}

/// Reconnect backoff settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub(crate) initial: Duration,
    pub(crate) max: Duration,
}

/// One connection slot.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    handle: Option<ConnectionHandle>,
    /// When the connection of this slot gets retired.
    retire_at: Option<Instant>,
    failures: u32,
    retry_at: Option<Instant>,
}

impl Slot {
    fn live(&self) -> Option<&ConnectionHandle> {
        self.handle
            .as_ref()
            .filter(|h| !h.is_closed() && !h.is_going_away())
    }
}

#[derive(Debug)]
struct SlotCell {
    slot: Mutex<Slot>,
    /// Last use, in nanoseconds since the pool's epoch.
    last_used: AtomicU64,
}

/// What one reaper pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Reaped {
    /// Idle connections closed.
    pub(crate) idle: usize,
    /// Slots whose connection was retired for its age (to be reconnected).
    pub(crate) retired: Vec<usize>,
    /// Ended connections cleared from their slot.
    pub(crate) dead: usize,
}

/// The slots of a channel and their bookkeeping.
#[derive(Debug)]
pub(crate) struct Pool {
    /// The endpoint, for messages.
    label: String,
    config: PoolConfig,
    backoff: Backoff,
    epoch: Instant,
    slots: Vec<SlotCell>,
}

impl Pool {
    pub(crate) fn new(label: String, mut config: PoolConfig, backoff: Backoff) -> Self {
        config.connections = config.connections.max(1);
        let slots = (0..config.connections)
            .map(|_| SlotCell {
                slot: Mutex::new(Slot::default()),
                last_used: AtomicU64::new(0),
            })
            .collect();
        Self {
            label,
            config,
            backoff,
            epoch: Instant::now(),
            slots,
        }
    }

    pub(crate) fn config(&self) -> &PoolConfig {
        &self.config
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Marks slot `i` as used now.
    pub(crate) fn touch(&self, i: usize) {
        self.slots[i]
            .last_used
            .fetch_max(self.now_ns(), Ordering::AcqRel);
    }

    fn idle_for(&self, i: usize) -> Duration {
        let last = self.slots[i].last_used.load(Ordering::Acquire);
        Duration::from_nanos(self.now_ns().saturating_sub(last))
    }

    /// Ready when a call could go now: some slot has no live connection (one can be
    /// opened) or a live one has room under its peer's `max_in_flight`. Otherwise the
    /// task is woken when one of them gets room or closes.
    pub(crate) fn poll_capacity(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        use std::task::Poll;
        let mut full = Vec::new();
        for cell in &self.slots {
            // A slot being connected by another caller will have room soon.
            let Ok(slot) = cell.slot.try_lock() else {
                return Poll::Ready(());
            };
            match slot.live() {
                Some(h) if !h.has_capacity() => full.push(h.clone()),
                _ => return Poll::Ready(()),
            }
        }
        for h in &full {
            h.wake_on_capacity(cx.waker());
        }
        // A call may have ended between the check and the registration.
        if full.iter().any(ConnectionHandle::has_capacity) || full.iter().any(|h| h.is_closed()) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Live connections now.
    pub(crate) fn live(&self) -> Vec<ConnectionHandle> {
        self.slots
            .iter()
            .filter_map(|c| c.slot.try_lock().ok().and_then(|s| s.live().cloned()))
            .collect()
    }

    /// Runs `f` on the live connection with the fewest calls in flight, connecting an
    /// empty slot (with `open`) when every live connection is busy or none is live. `f`
    /// runs while the slot is locked, so the connection cannot be retired before `f`
    /// has handed it its call.
    pub(crate) async fn dispatch<O, Fut, F, R>(&self, open: O, f: F) -> Result<R, Status>
    where
        O: Fn() -> Fut,
        Fut: Future<Output = Result<ConnectionHandle, Status>>,
        F: FnOnce(&ConnectionHandle) -> R,
    {
        let mut live: Vec<(usize, MutexGuard<'_, Slot>)> = Vec::new();
        let mut dead = Vec::new();
        for (i, cell) in self.slots.iter().enumerate() {
            // A slot being (re)connected by another caller is skipped.
            let Ok(slot) = cell.slot.try_lock() else {
                continue;
            };
            if slot.live().is_some() {
                live.push((i, slot));
            } else {
                dead.push(i);
            }
        }
        let best = crate::connection::least_loaded(live, |(_, slot)| {
            slot.handle.as_ref().expect("a live slot has a connection")
        })
        .map(|(i, slot)| {
            let load = slot.live().map_or(usize::MAX, ConnectionHandle::in_flight);
            (i, load, slot)
        });
        let fallback = match best {
            Some((i, load, slot)) if dead.is_empty() || load == 0 => {
                return Ok(self.run(i, &slot, f));
            }
            // Busy: prefer opening another connection; fall back to this one.
            Some((i, _, _)) => Some(i),
            None => None,
        };
        let mut last_err = None;
        let mut skipped = None;
        for i in dead {
            // A slot another caller started connecting meanwhile is not waited for here.
            let Ok(slot) = self.slots[i].slot.try_lock() else {
                skipped = skipped.or(Some(i));
                continue;
            };
            match self.connect_locked(i, slot, &open).await {
                Ok(slot) => return Ok(self.run(i, &slot, f)),
                Err(e) => last_err = Some(e),
            }
        }
        // The busy connection, else a slot being connected by another caller, else
        // slot 0 (every slot was locked during the scan).
        let i = match (fallback, last_err) {
            (Some(i), _) => i,
            (None, Some(e)) => return Err(e),
            (None, None) => skipped.unwrap_or(0),
        };
        let slot = self.acquire(i, &open).await?;
        Ok(self.run(i, &slot, f))
    }

    fn run<F, R>(&self, i: usize, slot: &Slot, f: F) -> R
    where
        F: FnOnce(&ConnectionHandle) -> R,
    {
        self.touch(i);
        let handle = slot.live().expect("dispatch only runs on live slots");
        f(handle)
    }

    /// Locks slot `i`, connecting it when it has no live connection.
    pub(crate) async fn acquire<O, Fut>(
        &self,
        i: usize,
        open: &O,
    ) -> Result<MutexGuard<'_, Slot>, Status>
    where
        O: Fn() -> Fut,
        Fut: Future<Output = Result<ConnectionHandle, Status>>,
    {
        let slot = self.slots[i].slot.lock().await;
        self.connect_locked(i, slot, open).await
    }

    /// Connects the locked slot `i` when it has no live connection (unless its
    /// reconnect backoff is running).
    async fn connect_locked<'a, O, Fut>(
        &'a self,
        i: usize,
        mut slot: MutexGuard<'a, Slot>,
        open: &O,
    ) -> Result<MutexGuard<'a, Slot>, Status>
    where
        O: Fn() -> Fut,
        Fut: Future<Output = Result<ConnectionHandle, Status>>,
    {
        if slot.live().is_some() {
            return Ok(slot);
        }
        let now = Instant::now();
        if let Some(at) = slot.retry_at
            && now < at
        {
            return Err(Status::unavailable(format!(
                "{} is unreachable; retrying in {:?}",
                self.label,
                at - now
            ))
            .not_executed());
        }
        match open().await {
            Ok(h) => {
                let opened = Instant::now();
                slot.handle = Some(h);
                slot.failures = 0;
                slot.retry_at = None;
                slot.retire_at = self.config.max_lifetime.map(|life| {
                    let jitter = rand::thread_rng().gen_range(0.0..0.05);
                    opened + life.mul_f64(1.0 - jitter)
                });
                self.touch(i);
                Ok(slot)
            }
            Err(e) => {
                slot.handle = None;
                slot.failures += 1;
                let backoff = self
                    .backoff
                    .initial
                    .saturating_mul(1 << slot.failures.min(10))
                    .min(self.backoff.max);
                slot.retry_at = Some(Instant::now() + backoff);
                Err(e)
            }
        }
    }

    /// One reaper pass: clears ended connections, closes idle ones, retires old ones.
    /// Slots locked by callers are left for the next pass.
    pub(crate) fn reap(&self) -> Reaped {
        let mut reaped = Reaped::default();
        let now = Instant::now();
        for (i, cell) in self.slots.iter().enumerate() {
            let Ok(mut slot) = cell.slot.try_lock() else {
                continue;
            };
            let Some(h) = slot.handle.clone() else {
                continue;
            };
            if h.is_closed() || h.is_going_away() {
                slot.handle = None;
                reaped.dead += 1;
                continue;
            }
            if h.in_flight() > 0 {
                self.touch(i);
            } else if let Some(idle) = self.config.idle_timeout
                && self.idle_for(i) >= idle
            {
                slot.handle = None;
                h.go_away(Status::new(
                    Code::Ok,
                    "the client closes this idle connection",
                ));
                tracing::debug!(peer = %h.peer(), "idle connection closed");
                reaped.idle += 1;
                continue;
            }
            if slot.retire_at.is_some_and(|at| now >= at) {
                slot.handle = None;
                h.go_away(Status::new(
                    Code::Ok,
                    "the client retires this connection: it reached its max lifetime",
                ));
                tracing::debug!(peer = %h.peer(), "connection retired after its max lifetime");
                reaped.retired.push(i);
            }
        }
        reaped
    }
}

/// Starts the reaper of `state` (when `interval` is `Some`): every `interval`, while
/// `state` is alive, `reap` runs on it. Only a weak reference is kept between passes.
pub(crate) fn spawn_reaper<T, F>(state: Weak<T>, interval: Option<Duration>, reap: F)
where
    T: Send + Sync + 'static,
    F: Fn(&Arc<T>) + Send + 'static,
{
    let Some(interval) = interval else {
        return;
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(state) = state.upgrade() else {
                return;
            };
            reap(&state);
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[test]
    fn reap_interval_follows_the_shorter_timeout() {
        let mut c = PoolConfig::default();
        assert_eq!(c.reap_interval(), None);
        c.idle_timeout = Some(Duration::from_millis(200));
        assert_eq!(c.reap_interval(), Some(Duration::from_millis(50)));
        c.max_lifetime = Some(Duration::from_millis(20));
        assert_eq!(c.reap_interval(), Some(Duration::from_millis(10)));
        c.idle_timeout = Some(Duration::from_secs(3600));
        c.max_lifetime = None;
        assert_eq!(c.reap_interval(), Some(Duration::from_secs(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_reaper_stops_when_its_state_is_dropped() {
        let state = Arc::new(AtomicUsize::new(0));
        spawn_reaper(
            Arc::downgrade(&state),
            Some(Duration::from_millis(10)),
            |s: &Arc<AtomicUsize>| {
                s.fetch_add(1, Ordering::SeqCst);
            },
        );
        tokio::time::sleep(Duration::from_millis(55)).await;
        assert_eq!(state.load(Ordering::SeqCst), 5);
        let weak = Arc::downgrade(&state);
        drop(state);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            weak.upgrade().is_none(),
            "the reaper holds no strong reference"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_connect_backs_off() {
        let pool = Pool::new(
            "test:1".into(),
            PoolConfig::default(),
            Backoff {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(150),
            },
        );
        let attempts = AtomicUsize::new(0);
        let open = || {
            attempts.fetch_add(1, Ordering::SeqCst);
            async { Err(Status::unavailable("refused").not_executed()) }
        };
        let e = pool.dispatch(open, |_| ()).await.unwrap_err();
        assert_eq!(e.message, "refused");
        // Within the backoff, no new attempt is made.
        let e = pool.dispatch(open, |_| ()).await.unwrap_err();
        assert!(e.message.contains("retrying in"), "{}", e.message);
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        pool.dispatch(open, |_| ()).await.unwrap_err();
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
        assert!(pool.live().is_empty());
        assert_eq!(pool.reap(), Reaped::default());
    }
}
