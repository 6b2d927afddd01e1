//! Call spans and W3C trace context.
//!
//! Every call measured by [`crate::Measure`] is one span on its side. The span's
//! trace and parent come from the call's metadata (`traceparent`, which the wire
//! carries); the span's own id replaces the parent in the metadata before the call goes
//! on, so whatever the call causes next — the runtime forwarding it to a provider, a
//! handler calling out — is its child. That is all propagation needs: ids, no
//! allocation, whatever happens to the span itself.
//!
//! A span is *recorded* (turned into a [`SpanRecord`] and handed to the
//! [`Tracer`]'s exporter) only when its trace is sampled: the caller's `traceparent`
//! said so, or this side started the trace and its sampler picked it. Recording costs a
//! few hundred nanoseconds and a queue slot; a full queue drops spans (counted), it
//! never waits.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use polycall_core::{Code, TraceContext};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Whether a span served a call or made one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpanKind {
    /// It served the call.
    Server,
    /// It made the call.
    Client,
}

/// One finished span, as exporters receive it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanRecord {
    /// The trace (32 lowercase hex digits).
    pub trace_id: String,
    /// This span (16 lowercase hex digits).
    pub span_id: String,
    /// The span that caused it, when any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    /// `service.method`.
    pub name: String,
    /// Server or client side.
    pub kind: SpanKind,
    /// Who recorded it (the OpenTelemetry `service.name`: `polycall-runtime`, a
    /// provider's name).
    pub service: String,
    /// Start, Unix nanoseconds.
    pub start_unix_nanos: u64,
    /// How long it lasted, nanoseconds.
    pub duration_nanos: u64,
    /// The status code's name when the call failed (`deadline_exceeded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Further attributes (`rpc.system`, `polycall.request_bytes`, …).
    #[serde(default)]
    pub attributes: Vec<(String, String)>,
}

/// Parsed ids of a [`SpanRecord`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanIds {
    /// The trace.
    pub trace_id: [u8; 16],
    /// This span.
    pub span_id: [u8; 8],
    /// Its parent.
    pub parent_id: Option<[u8; 8]>,
}

impl SpanRecord {
    /// The ids as bytes; `None` when any is not the right number of hex digits or all zero.
    pub fn ids(&self) -> Option<SpanIds> {
        let mut trace_id = [0; 16];
        let mut span_id = [0; 8];
        hex_decode(&self.trace_id, &mut trace_id)?;
        hex_decode(&self.span_id, &mut span_id)?;
        let parent_id = match &self.parent_id {
            None => None,
            Some(p) => {
                let mut b = [0; 8];
                hex_decode(p, &mut b)?;
                Some(b)
            }
        };
        (trace_id != [0; 16] && span_id != [0; 8] && parent_id != Some([0; 8])).then_some(SpanIds {
            trace_id,
            span_id,
            parent_id,
        })
    }

    /// When it started.
    pub fn start(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(self.start_unix_nanos)
    }
}

fn hex_decode(s: &str, out: &mut [u8]) -> Option<()> {
    let b = s.as_bytes();
    if b.len() != out.len() * 2 {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nib(b[2 * i])? << 4) | nib(b[2 * i + 1])?;
    }
    Some(())
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(rand::random::<u64>() | 1);
    static CURRENT: Cell<Option<CallContext>> = const { Cell::new(None) };
}

/// A random, non-zero 64-bit number (xorshift, seeded per thread from the OS).
fn next_random() -> u64 {
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        r.set(x);
        x
    })
}

/// A new span id.
pub fn new_span_id() -> [u8; 8] {
    next_random().to_be_bytes()
}

/// A new trace id.
pub fn new_trace_id() -> [u8; 16] {
    let mut t = [0; 16];
    t[..8].copy_from_slice(&next_random().to_be_bytes());
    t[8..].copy_from_slice(&next_random().to_be_bytes());
    t
}

/// The trace and span of the call whose code runs on this thread now (set while a
/// measured call's future is polled): what log lines carry as `trace_id` and `span_id`,
/// and what a call made from inside a handler takes as its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallContext {
    /// The trace.
    pub trace_id: [u8; 16],
    /// The span of the call being served.
    pub span_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl CallContext {
    /// The context of the call being served on this thread, when any.
    pub fn current() -> Option<CallContext> {
        CURRENT.with(Cell::get)
    }

    /// Runs `f` with `self` as the current context, then puts the previous one back.
    pub fn enter<R>(self, f: impl FnOnce() -> R) -> R {
        let previous = CURRENT.with(|c| c.replace(Some(self)));
        struct Restore(Option<CallContext>);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(previous);
        f()
    }
}

/// Decides which new traces are recorded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    /// Record none this side starts (callers' sampled traces are still recorded).
    Never,
    /// Record every trace this side starts.
    Always,
    /// Record this fraction (0..=1) of the traces this side starts.
    Ratio(f64),
}

impl Sampler {
    fn pick(self) -> bool {
        match self {
            Sampler::Never => false,
            Sampler::Always => true,
            Sampler::Ratio(r) => (next_random() >> 11) as f64 / (1u64 << 53) as f64 <= r,
        }
    }
}

/// Where recorded spans go: a batch at a time, off the calls' path.
pub trait SpanExporter: Send + Sync + 'static {
    /// Sends one batch. Errors are logged by the tracer's export task, never returned
    /// to a call.
    fn export(
        &self,
        batch: Vec<SpanRecord>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ExportError>> + Send + '_>>;
}

/// Why a batch of spans did not leave.
#[derive(Debug, thiserror::Error)]
#[error("span export to {target} failed: {reason}")]
pub struct ExportError {
    /// Where they were going.
    pub target: String,
    /// What went wrong.
    pub reason: String,
}

/// Keeps recorded spans in memory (tests, the dashboard's recent traces).
#[derive(Debug, Default, Clone)]
pub struct MemoryExporter {
    spans: Arc<std::sync::Mutex<Vec<SpanRecord>>>,
}

impl MemoryExporter {
    /// Every span exported so far.
    pub fn spans(&self) -> Vec<SpanRecord> {
        self.spans.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl SpanExporter for MemoryExporter {
    fn export(
        &self,
        batch: Vec<SpanRecord>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ExportError>> + Send + '_>>
    {
        self.spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(batch);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Spans a tracer queues before it drops new ones.
pub const QUEUE: usize = 8192;
/// Largest batch handed to the exporter.
pub const BATCH: usize = 512;
/// How long a span waits for its batch to fill.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Samples, records and exports spans.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use polycall_observe::trace::{MemoryExporter, Sampler, Tracer};
/// let memory = MemoryExporter::default();
/// let tracer = Tracer::start("demo", Sampler::Always, memory.clone());
/// assert!(tracer.recording());
/// # }
/// ```
#[derive(Clone)]
pub struct Tracer {
    inner: Option<Arc<TracerInner>>,
}

struct TracerInner {
    service: String,
    sampler: Sampler,
    queue: mpsc::Sender<SpanRecord>,
    dropped: AtomicU64,
    exported: AtomicU64,
    failed: AtomicU64,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            None => f.write_str("Tracer(off)"),
            Some(i) => f
                .debug_struct("Tracer")
                .field("service", &i.service)
                .field("sampler", &i.sampler)
                .finish(),
        }
    }
}

/// What a tracer has done, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TracerStats {
    /// Spans handed to the exporter.
    pub exported: u64,
    /// Spans dropped because the queue was full.
    pub dropped: u64,
    /// Spans in batches the exporter failed to send.
    pub failed: u64,
}

impl Tracer {
    /// A tracer that records nothing: ids still propagate.
    pub fn off() -> Self {
        Self { inner: None }
    }

    /// A tracer recording as `service` (the OpenTelemetry `service.name`), deciding
    /// with `sampler` for traces it starts, exporting through `exporter` from a task
    /// spawned on the current tokio runtime.
    pub fn start(
        service: impl Into<String>,
        sampler: Sampler,
        exporter: impl SpanExporter,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<SpanRecord>(QUEUE);
        let inner = Arc::new(TracerInner {
            service: service.into(),
            sampler,
            queue: tx,
            dropped: AtomicU64::new(0),
            exported: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                let first = match rx.recv().await {
                    Some(s) => s,
                    None => break,
                };
                batch.push(first);
                let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
                while batch.len() < BATCH {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(s)) => batch.push(s),
                        Ok(None) | Err(_) => break,
                    }
                }
                let n = batch.len() as u64;
                let result = exporter.export(std::mem::take(&mut batch)).await;
                if let Some(inner) = weak.upgrade() {
                    match result {
                        Ok(()) => inner.exported.fetch_add(n, Relaxed),
                        Err(e) => {
                            tracing::warn!("{e}");
                            inner.failed.fetch_add(n, Relaxed)
                        }
                    };
                }
            }
        });
        Self { inner: Some(inner) }
    }

    /// Whether spans are recorded at all.
    pub fn recording(&self) -> bool {
        self.inner.is_some()
    }

    /// The `service.name` spans are recorded as.
    pub fn service(&self) -> &str {
        self.inner.as_ref().map_or("", |i| &i.service)
    }

    /// Whether a trace this side starts now is recorded.
    pub fn sample_new(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.sampler.pick())
    }

    /// Queues `span` for export; drops it (counted) when the queue is full.
    pub fn record(&self, span: SpanRecord) {
        if let Some(i) = &self.inner
            && i.queue.try_send(span).is_err()
        {
            i.dropped.fetch_add(1, Relaxed);
        }
    }

    /// What the tracer has done so far.
    pub fn stats(&self) -> TracerStats {
        self.inner
            .as_ref()
            .map_or(TracerStats::default(), |i| TracerStats {
                exported: i.exported.load(Relaxed),
                dropped: i.dropped.load(Relaxed),
                failed: i.failed.load(Relaxed),
            })
    }
}

/// One span being measured: its ids, and whether it will be recorded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpenSpan {
    pub(crate) context: CallContext,
    pub(crate) parent: Option<[u8; 8]>,
    pub(crate) recorded: bool,
    pub(crate) started: SystemTime,
}

impl OpenSpan {
    /// Opens the span of a call whose metadata holds `trace` (the caller's context, or
    /// on the client side the context this call was made from), and rewrites `trace`
    /// so what follows is its child. `None` when there is no trace to continue and none
    /// is started.
    pub(crate) fn open(trace: &mut Option<TraceContext>, tracer: &Tracer) -> Option<OpenSpan> {
        let span_id = new_span_id();
        match trace {
            Some(t) => {
                let parent = t.parent_id;
                t.parent_id = span_id;
                Some(OpenSpan {
                    context: CallContext {
                        trace_id: t.trace_id,
                        span_id,
                        flags: t.flags,
                    },
                    parent: Some(parent),
                    recorded: t.sampled() && tracer.recording(),
                    started: SystemTime::now(),
                })
            }
            None if tracer.sample_new() => {
                let trace_id = new_trace_id();
                *trace = Some(TraceContext {
                    trace_id,
                    parent_id: span_id,
                    flags: 1,
                    tracestate: None,
                });
                Some(OpenSpan {
                    context: CallContext {
                        trace_id,
                        span_id,
                        flags: 1,
                    },
                    parent: None,
                    recorded: true,
                    started: SystemTime::now(),
                })
            }
            None => None,
        }
    }

    /// The finished span's record.
    pub(crate) fn finish(
        &self,
        tracer: &Tracer,
        name: String,
        kind: SpanKind,
        took: Duration,
        error: Option<Code>,
        attributes: Vec<(String, String)>,
    ) -> SpanRecord {
        SpanRecord {
            trace_id: hex(&self.context.trace_id),
            span_id: hex(&self.context.span_id),
            parent_id: self.parent.map(|p| hex(&p)),
            name,
            kind,
            service: tracer.service().to_owned(),
            start_unix_nanos: self
                .started
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            duration_nanos: u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            error: error.map(|c| c.name().to_owned()),
            attributes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_continues_the_callers_trace_and_becomes_the_parent() {
        let caller = TraceContext::parse(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            None,
        )
        .unwrap();
        let mut trace = Some(caller.clone());
        let span = OpenSpan::open(&mut trace, &Tracer::off()).unwrap();
        assert_eq!(span.parent, Some(caller.parent_id));
        assert_eq!(span.context.trace_id, caller.trace_id);
        let next = trace.unwrap();
        assert_eq!(
            next.parent_id, span.context.span_id,
            "what follows is the span's child"
        );
        assert!(!span.recorded, "an off tracer records nothing");
    }

    #[test]
    fn without_a_trace_and_without_sampling_nothing_opens() {
        let mut trace = None;
        assert!(OpenSpan::open(&mut trace, &Tracer::off()).is_none());
        assert!(trace.is_none());
    }

    #[test]
    fn context_is_restored_after_enter() {
        let c = CallContext {
            trace_id: [1; 16],
            span_id: [2; 8],
            flags: 1,
        };
        assert_eq!(CallContext::current(), None);
        let inner = c.enter(CallContext::current);
        assert_eq!(inner, Some(c));
        assert_eq!(CallContext::current(), None);
    }

    #[test]
    fn record_ids_parse_and_reject() {
        let mut r = SpanRecord {
            trace_id: hex(&[7; 16]),
            span_id: hex(&[8; 8]),
            parent_id: None,
            name: "a.b".into(),
            kind: SpanKind::Server,
            service: "s".into(),
            start_unix_nanos: 0,
            duration_nanos: 1,
            error: None,
            attributes: vec![],
        };
        assert!(r.ids().is_some());
        r.span_id = "00".repeat(8);
        assert!(r.ids().is_none());
        r.span_id = "XYZ".into();
        assert!(r.ids().is_none());
    }
}
