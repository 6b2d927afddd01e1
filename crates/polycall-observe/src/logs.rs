//! Log line formats that know which call they belong to.
//!
//! [`JsonLines`] writes one JSON object a line — `timestamp`, `level`, `target`,
//! `message`, the event's fields, and `trace_id` / `span_id` when the event happened
//! while a measured call was being served on that thread ([`CallContext::current`]).
//! [`TelemetryLines`] writes libpolycall's telemetry shape (`event`, `correlation_id`,
//! `service`, `operation`, `status`, `duration_ns`, `detail`, `timestamp`), the call's
//! trace id standing in as the correlation id.
//!
//! ```
//! use polycall_observe::logs::JsonLines;
//! let subscriber = tracing_subscriber::fmt().event_format(JsonLines).with_writer(std::io::sink).finish();
//! tracing::subscriber::with_default(subscriber, || tracing::info!(method = "a.b", "served"));
//! ```

use std::fmt;

use serde_json::{Map, Value, json};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::trace::{CallContext, hex};

/// One JSON object a line, with the current call's `trace_id` and `span_id`.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

/// libpolycall's telemetry line shape.
#[derive(Debug, Clone, Copy, Default)]
pub struct TelemetryLines;

#[derive(Default)]
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), json!(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), json!(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), json!(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), json!(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), json!(value));
    }
}

/// Now, as RFC 3339 UTC with microseconds.
fn timestamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

fn fields_of(event: &Event<'_>) -> Map<String, Value> {
    let mut f = Fields::default();
    event.record(&mut f);
    f.0
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert("timestamp".into(), json!(timestamp()));
        line.insert("level".into(), json!(meta.level().as_str()));
        line.insert("target".into(), json!(meta.target()));
        let mut fields = fields_of(event);
        line.insert(
            "message".into(),
            fields
                .remove("message")
                .unwrap_or(Value::String(String::new())),
        );
        if let Some(c) = CallContext::current() {
            line.insert("trace_id".into(), json!(hex(&c.trace_id)));
            line.insert("span_id".into(), json!(hex(&c.span_id)));
        }
        for (k, v) in fields {
            line.entry(k).or_insert(v);
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// A trace id in the 8-4-4-4-12 form of a UUID (libpolycall's correlation ids).
fn uuid_form(id: &[u8; 16]) -> String {
    let h = hex(id);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

impl<S, N> FormatEvent<S, N> for TelemetryLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = fields_of(event);
        let message = fields.remove("message").unwrap_or(json!(""));
        let correlation = CallContext::current()
            .map(|c| uuid_form(&c.trace_id))
            .unwrap_or_else(|| uuid_form(&crate::trace::new_trace_id()));
        let take =
            |fields: &mut Map<String, Value>, k: &str| fields.remove(k).unwrap_or(Value::Null);
        let service = take(&mut fields, "service");
        let operation = take(&mut fields, "method");
        let duration = take(&mut fields, "duration_ns");
        let line = json!({
            "event": message,
            "correlation_id": correlation,
            "service": if service.is_null() { json!(meta.target()) } else { service },
            "operation": operation,
            "status": meta.level().as_str().to_ascii_lowercase(),
            "duration_ns": duration,
            "detail": Value::Object(fields),
            "timestamp": timestamp(),
        });
        writeln!(writer, "{line}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The lines `format` writes for what `f` logs.
    fn capture<E>(format: E, f: impl FnOnce()) -> Vec<Value>
    where
        E: FormatEvent<
                tracing_subscriber::Registry,
                tracing_subscriber::fmt::format::DefaultFields,
            > + Send
            + Sync
            + 'static,
    {
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .event_format(format)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::with_default(sub, f);
        lines(&buf)
    }

    fn lines(buf: &Buf) -> Vec<Value> {
        String::from_utf8(buf.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn json_lines_carry_the_calls_ids_only_inside_the_call() {
        let c = CallContext {
            trace_id: [0xab; 16],
            span_id: [0xcd; 8],
            flags: 1,
        };
        let l = capture(JsonLines, || {
            tracing::info!(n = 3, "outside");
            c.enter(|| tracing::warn!("inside"));
        });
        assert_eq!(l[0]["message"], "outside");
        assert_eq!(l[0]["n"], 3);
        assert!(l[0].get("trace_id").is_none());
        assert_eq!(l[1]["level"], "WARN");
        assert_eq!(l[1]["trace_id"], "ab".repeat(16));
        assert_eq!(l[1]["span_id"], "cd".repeat(8));
    }

    #[test]
    fn telemetry_lines_have_libpolycalls_shape() {
        let c = CallContext {
            trace_id: [0x11; 16],
            span_id: [0x22; 8],
            flags: 1,
        };
        let all = capture(TelemetryLines, || {
            c.enter(|| {
                tracing::info!(
                    service = "greeter",
                    method = "hello",
                    duration_ns = 1500u64,
                    "call"
                )
            });
        });
        let l = &all[0];
        for k in [
            "event",
            "correlation_id",
            "service",
            "operation",
            "status",
            "duration_ns",
            "detail",
            "timestamp",
        ] {
            assert!(l.get(k).is_some(), "{k} missing in {l}");
        }
        assert_eq!(l["correlation_id"], "11111111-1111-1111-1111-111111111111");
        assert_eq!(l["operation"], "hello");
        assert_eq!(l["duration_ns"], 1500);
    }
}
