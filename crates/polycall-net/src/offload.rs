//! CPU-heavy work away from the connection tasks.
//!
//! A connection's task must answer its peer within microseconds; a TLS handshake (key
//! agreement, a signature that may happen in an HSM over PKCS#11), an OPAQUE login
//! (Argon2 on the client, group operations on the server) or compressing a large message
//! takes milliseconds. Such work runs here: on a small tokio runtime of its own (one
//! worker per core, at most four, threads named `polycall-cpu`) whose threads run at the
//! lowest priority (SCHED_IDLE and nice +10 on Linux), so an event loop that a socket
//! woke preempts them at once. The pool is bounded by its threads: a burst of logins
//! queues here instead of taking every core from the calls in flight. In a process whose
//! cores are saturated, this work gets only what is left (a handshake or a login waits):
//! calls on established connections come first.
//!
//! [`handlers`] is the other runtime here: where connections run their handlers.
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

/// How much lower the offload threads' nice value is than the process's (+10; never
/// past 19, the lowest). They also run under SCHED_IDLE on Linux.
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
            .on_thread_start(|| lower_priority_by(NICENESS))
            .enable_all()
            .build()
            .expect("the offload runtime starts (threads and timers)")
    })
}

#[cfg(target_os = "linux")]
fn lower_priority_by(niceness: i32) {
    // SCHED_IDLE: the kernel lets any normal thread (an event loop that a socket just
    // woke) preempt this one at once. A high nice value alone is not enough: the
    // scheduler lets a running thread finish its slice — milliseconds — first.
    use thread_priority::unix::{
        NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
        thread_native_id,
    };
    let tid = rustix::thread::gettid();
    let inherited = rustix::process::getpriority_process(Some(tid)).unwrap_or(0);
    // The short sleeps of `pause` last what they ask for, not the default 50 µs slack.
    let _ = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1_000));
    if let Err(e) = set_thread_priority_and_policy(
        thread_native_id(),
        thread_priority::ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    ) {
        tracing::debug!(error = ?e, "could not make the offload thread SCHED_IDLE");
    }
    // And a lower nice value, relative to what the thread inherited: a process already
    // niced runs its offload work lower still, never higher.
    let nice = inherited.saturating_add(niceness).min(19);
    if let Err(e) = rustix::process::setpriority_process(Some(tid), nice) {
        tracing::debug!(error = %e, "could not lower the offload thread's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority_by(_: i32) {}

/// How long [`pause`] sleeps.
const PAUSE: std::time::Duration = std::time::Duration::from_micros(10);

/// Gives this core away for a moment: called by long work on the offload runtime
/// between steps of about 100–200 µs (decompressing a large message, for one).
///
/// SCHED_IDLE alone does not keep an event loop on the same core waiting less than a
/// scheduler slice: on an EEVDF kernel (Linux 6.6 and later) a thread woken while the
/// others run may be ineligible for a few milliseconds, and an offload thread that
/// yields (`sched_yield`) is picked again. Sleeping takes this thread off the run
/// queue, so whatever else is runnable there runs first (measured with `perf sched` by
/// `cargo xtask bench stall`: waits of the event loop of 2.5–3.5 ms behind a 1 MiB
/// brotli decompression, with the loop and the offload thread on one core).
pub fn pause() {
    std::thread::sleep(PAUSE);
}

/// The offload runtime's handle.
pub fn handle() -> &'static Handle {
    runtime().handle()
}

/// The runtime where connections run their incoming calls' handlers by default
/// ([`crate::ConnectionConfig::handler_runtime`]): worker threads of its own (one per
/// core, named `polycall-handler`, normal priority). A handler that computes for long
/// holds one of these threads, never a thread that polls sockets: on a tokio runtime,
/// a worker busy in a handler also stops polling the I/O driver, so every connection
/// on it would wait — which is why handlers do not run where connections do.
/// `POLYCALL_HANDLER_THREADS` sets the number of threads.
pub fn handlers() -> &'static Handle {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let workers = std::env::var("POLYCALL_HANDLER_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("polycall-handler")
            .enable_all()
            .build()
            .expect("the handler runtime starts (threads and timers)")
    })
    .handle()
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
        let (name, nice, policy) = super::run(|| {
            let name = std::thread::current().name().map(str::to_owned);
            let nice =
                rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
            let policy = thread_priority::unix::thread_schedule_policy().unwrap();
            (name, nice, policy)
        })
        .await
        .unwrap();
        assert_eq!(name.as_deref(), Some("polycall-cpu"));
        assert_eq!(
            policy,
            thread_priority::unix::ThreadSchedulePolicy::Normal(
                thread_priority::unix::NormalThreadSchedulePolicy::Idle
            )
        );
        let inherited = rustix::process::getpriority_process(None).unwrap();
        assert_eq!(nice, (inherited + super::NICENESS).min(19));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_panic_is_an_internal_error_not_a_crash() {
        let e = super::run(|| -> u8 { panic!("boom") }).await.unwrap_err();
        assert_eq!(e.code, polycall_core::Code::Internal);
    }
}
