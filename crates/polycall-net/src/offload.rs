//! CPU-heavy work away from the connection tasks.
//!
//! A connection's task must answer its peer within microseconds; a TLS handshake (key
//! agreement, a signature that may happen in an HSM over PKCS#11), an OPAQUE login
//! (Argon2 on the client, group operations on the server) or compressing a large message
//! takes milliseconds. Such work runs here: on a small tokio runtime of its own (one
//! worker per core, at most four, threads named `polycall-cpu`) whose threads run at a
//! lower scheduling priority (nice +10 on Linux), so the event loops preempt them whenever
//! they have calls to serve. The pool is bounded by its threads: a burst of logins queues
//! here instead of taking every core from the calls in flight.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let n = polycall_net::offload::run(|| (1..=10u64).product::<u64>()).await.unwrap();
//! assert_eq!(n, 3_628_800);
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use polycall_core::Status;
use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;

/// The nice value of the offload threads (higher runs less).
const NICENESS: i32 = 10;

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(1, 4);
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("polycall-cpu")
            .on_thread_start(lower_priority)
            .enable_all()
            .build()
            .expect("the offload runtime starts (threads and timers)")
    })
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    // On Linux the nice value is per thread: this one's, not the process's.
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), NICENESS) {
        tracing::debug!(error = %e, "could not lower the offload thread's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// The offload runtime's handle.
pub fn handle() -> &'static Handle {
    runtime().handle()
}

/// A task on the offload runtime; aborted when dropped, so an abandoned handshake does
/// not go on burning a core.
#[derive(Debug)]
pub struct Offloaded<T>(JoinHandle<T>);

impl<T> Future for Offloaded<T> {
    type Output = Result<T, Status>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| {
            r.map_err(|e| Status::internal(format!("work moved off the event loop failed: {e}")))
        })
    }
}

impl<T> Drop for Offloaded<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Drives `future` (a TLS handshake, say) on the offload runtime. The I/O objects it
/// uses may belong to another runtime: their readiness still comes from that one.
pub fn spawn<F>(future: F) -> Offloaded<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    Offloaded(handle().spawn(future))
}

/// Runs the CPU-bound closure `f` on the offload runtime and waits for its result
/// without blocking the caller's thread.
pub fn run<F, T>(f: F) -> Offloaded<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    Offloaded(handle().spawn(async move { f() }))
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "current_thread")]
    async fn work_runs_on_named_low_priority_threads() {
        let (name, nice) = super::run(|| {
            let name = std::thread::current().name().map(str::to_owned);
            let nice =
                rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
            (name, nice)
        })
        .await
        .unwrap();
        assert_eq!(name.as_deref(), Some("polycall-cpu"));
        assert!(nice >= super::NICENESS, "nice {nice}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_panic_is_an_internal_error_not_a_crash() {
        let e = super::run(|| -> u8 { panic!("boom") }).await.unwrap_err();
        assert_eq!(e.code, polycall_core::Code::Internal);
    }
}
