//! Limits on HTTP requests: rate (per route and per API key), quota (per API key, in a
//! fixed window) and concurrency (per route). Each refusal says when to retry: a rate
//! or a quota answers 429 (`busy`) with `Retry-After`, a full route 503
//! (`unavailable`) with `Retry-After: 1`.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use polycall_core::Status;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Requests per second with bursts (a GCRA bucket).
pub(crate) struct Rate {
    per_second: u32,
    limiter: DefaultDirectRateLimiter,
}

impl Rate {
    /// `per_second` sustained, `burst` at once (default `per_second`); 0 is read as 1.
    pub(crate) fn new(per_second: u32, burst: Option<u32>) -> Self {
        let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let burst = burst.and_then(NonZeroU32::new).unwrap_or(rate);
        Self {
            per_second: rate.get(),
            limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
        }
    }

    /// Takes one request, or says when one would conform.
    pub(crate) fn check(&self, what: &str) -> Result<(), Status> {
        self.limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            Status::busy(format!(
                "{what} is limited to {} requests per second; retry after {wait:?}",
                self.per_second
            ))
            .with_retry_after(wait)
        })
    }
}

/// At most `limit` requests in a fixed window.
pub(crate) struct WindowQuota {
    limit: u64,
    window: Duration,
    used: Mutex<(Instant, u64)>,
}

impl WindowQuota {
    pub(crate) fn new(limit: u64, window: Duration) -> Self {
        Self {
            limit,
            window: window.max(Duration::from_secs(1)),
            used: Mutex::new((Instant::now(), 0)),
        }
    }

    /// Takes one request of the window, or says when the next window opens.
    pub(crate) fn take(&self, what: &str) -> Result<(), Status> {
        let now = Instant::now();
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(used.0) >= self.window {
            // Windows follow each other from the first: a quiet key does not shift them.
            let elapsed = now.duration_since(used.0).as_nanos() / self.window.as_nanos();
            used.0 += self.window * u32::try_from(elapsed).unwrap_or(u32::MAX);
            used.1 = 0;
        }
        if used.1 >= self.limit {
            let wait = (used.0 + self.window).saturating_duration_since(now);
            return Err(Status::busy(format!(
                "{what} used its quota of {} requests per {:?}; the next window opens in {wait:?}",
                self.limit, self.window
            ))
            .with_retry_after(wait));
        }
        used.1 += 1;
        Ok(())
    }
}

/// At most `limit` requests in progress.
pub(crate) struct Concurrency {
    limit: usize,
    slots: Arc<Semaphore>,
}

impl Concurrency {
    pub(crate) fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        Self {
            limit,
            slots: Arc::new(Semaphore::new(limit)),
        }
    }

    /// A slot held until the answer is sent, or `unavailable` when all are taken.
    pub(crate) fn enter(&self, what: &str) -> Result<OwnedSemaphorePermit, Status> {
        self.slots.clone().try_acquire_owned().map_err(|_| {
            Status::unavailable(format!(
                "{what} serves {} requests at once and all are in progress",
                self.limit
            ))
            .with_retry_after(Duration::from_secs(1))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polycall_core::Code;

    #[test]
    fn a_rate_refuses_over_its_burst_and_says_when() {
        let r = Rate::new(1, Some(2));
        r.check("GET /x").unwrap();
        r.check("GET /x").unwrap();
        let e = r.check("GET /x").unwrap_err();
        assert_eq!(e.code, Code::Busy);
        let after = e.retry_after.unwrap();
        assert!(
            after > Duration::ZERO && after <= Duration::from_secs(1),
            "{after:?}"
        );
    }

    #[test]
    fn a_quota_refuses_until_the_next_window() {
        let q = WindowQuota::new(2, Duration::from_secs(3600));
        q.take("key partner").unwrap();
        q.take("key partner").unwrap();
        let e = q.take("key partner").unwrap_err();
        assert_eq!(e.code, Code::Busy);
        assert!(e.retry_after.unwrap() > Duration::from_secs(3500));
    }

    #[test]
    fn concurrency_frees_a_slot_when_the_request_ends() {
        let c = Concurrency::new(1);
        let held = c.enter("GET /x").unwrap();
        assert_eq!(c.enter("GET /x").unwrap_err().code, Code::Unavailable);
        drop(held);
        let _again = c.enter("GET /x").unwrap();
    }
}
