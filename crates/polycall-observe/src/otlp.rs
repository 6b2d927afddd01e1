//! OTLP/gRPC export of call spans (feature `otlp`), through `opentelemetry-otlp`.
//!
//! Spans recorded by other processes and handed to the runtime (a Python or
//! TypeScript provider's) keep their own `service.name`: each batch is split by
//! service and sent through one exporter per service, each with its resource.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use tokio::sync::Mutex;

use crate::trace::{ExportError, SpanExporter, SpanKind as Kind, SpanRecord};

/// Sends spans to an OTLP/gRPC collector (`http://127.0.0.1:4317`).
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use polycall_observe::{otlp::OtlpExporter, trace::{Sampler, Tracer}};
/// let tracer = Tracer::start("my-service", Sampler::Ratio(0.1), OtlpExporter::new("http://127.0.0.1:4317"));
/// # drop(tracer); }
/// ```
#[derive(Debug)]
pub struct OtlpExporter {
    endpoint: String,
    by_service: Mutex<HashMap<String, opentelemetry_otlp::SpanExporter>>,
}

impl OtlpExporter {
    /// Exports to `endpoint` (a gRPC URL).
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            by_service: Mutex::new(HashMap::new()),
        }
    }

    fn err(&self, reason: impl std::fmt::Display) -> ExportError {
        ExportError {
            target: self.endpoint.clone(),
            reason: reason.to_string(),
        }
    }

    async fn send(&self, batch: Vec<SpanRecord>) -> Result<(), ExportError> {
        let mut groups: HashMap<String, Vec<SpanData>> = HashMap::new();
        for r in batch {
            if let Some(d) = to_span_data(&r) {
                groups.entry(r.service.clone()).or_default().push(d);
            }
        }
        let mut exporters = self.by_service.lock().await;
        for (service, spans) in groups {
            if !exporters.contains_key(&service) {
                let mut e = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(self.endpoint.clone())
                    .with_timeout(Duration::from_secs(5))
                    .build()
                    .map_err(|e| self.err(e))?;
                e.set_resource(
                    &Resource::builder_empty()
                        .with_service_name(service.clone())
                        .build(),
                );
                exporters.insert(service.clone(), e);
            }
            if let Some(e) = exporters.get(&service) {
                e.export(spans).await.map_err(|e| self.err(e))?;
            }
        }
        Ok(())
    }
}

impl SpanExporter for OtlpExporter {
    fn export(
        &self,
        batch: Vec<SpanRecord>,
    ) -> Pin<Box<dyn Future<Output = Result<(), ExportError>> + Send + '_>> {
        Box::pin(self.send(batch))
    }
}

/// One record as OpenTelemetry's span data; `None` when its ids are malformed.
fn to_span_data(r: &SpanRecord) -> Option<SpanData> {
    let ids = r.ids()?;
    let context = SpanContext::new(
        TraceId::from_bytes(ids.trace_id),
        SpanId::from_bytes(ids.span_id),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    );
    let status = match &r.error {
        Some(code) => Status::error(code.clone()),
        None => Status::Ok,
    };
    let mut attributes: Vec<KeyValue> = r
        .attributes
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .collect();
    if let Some(code) = &r.error {
        attributes.push(KeyValue::new("polycall.code", code.clone()));
    }
    Some(SpanData {
        span_context: context,
        parent_span_id: ids.parent_id.map_or(SpanId::INVALID, SpanId::from_bytes),
        parent_span_is_remote: ids.parent_id.is_some(),
        span_kind: match r.kind {
            Kind::Server => SpanKind::Server,
            Kind::Client => SpanKind::Client,
        },
        name: Cow::Owned(r.name.clone()),
        start_time: r.start(),
        end_time: r.start() + Duration::from_nanos(r.duration_nanos),
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: InstrumentationScope::builder("polycall").build(),
    })
}
