//! The state machine's one source of time.
//!
//! polycall-proto reads no clock of its own: what it times (how long compressing a
//! message took, which the adaptive selector learns from) it asks of the [`Clock`] in
//! its [`Config`](crate::connection::Config). The default reads the system's monotonic
//! clock; a test or a fuzzer gives one that returns what it wants, and the same inputs
//! then make the same decisions and the same bytes, run after run.
//!
//! ```
//! use std::time::Duration;
//! use polycall_proto::Clock;
//! let frozen = Clock::from_fn(|| Duration::from_secs(7));
//! assert_eq!(frozen.now(), Duration::from_secs(7));
//! let system = Clock::system();
//! assert!(system.now() <= system.now());
//! ```

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A monotonic clock: time since some fixed origin.
#[derive(Clone)]
pub struct Clock(Source);

#[derive(Clone)]
enum Source {
    System,
    Fn(Arc<dyn Fn() -> Duration + Send + Sync>),
}

impl Clock {
    /// The system's monotonic clock (the default).
    pub fn system() -> Self {
        Clock(Source::System)
    }

    /// A clock that reads `now` (for tests and fuzzing: a constant, or a counter).
    pub fn from_fn(now: impl Fn() -> Duration + Send + Sync + 'static) -> Self {
        Clock(Source::Fn(Arc::new(now)))
    }

    /// The time now, since the clock's origin.
    pub fn now(&self) -> Duration {
        match &self.0 {
            Source::System => {
                static ORIGIN: OnceLock<Instant> = OnceLock::new();
                ORIGIN.get_or_init(Instant::now).elapsed()
            }
            Source::Fn(now) => now(),
        }
    }

    /// Runs `f` and returns its result with the time it took by this clock.
    pub fn time<T>(&self, f: impl FnOnce() -> T) -> (T, Duration) {
        let start = self.now();
        let out = f();
        (out, self.now().saturating_sub(start))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Source::System => "Clock::system",
            Source::Fn(_) => "Clock::from_fn",
        })
    }
}
