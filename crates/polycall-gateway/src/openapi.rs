//! The OpenAPI 3.1 document and the docs page, generated from the served methods.

use polycall_core::{CallKind, Code, MethodDescription};
use serde_json::{Map, Value as Json, json};

use crate::routes::transform::{Source, Type};
use crate::routes::{Routes, Segment};

/// The path a method is called at: `/v1/{service}/{method}`.
///
/// ```
/// assert_eq!(polycall_gateway::openapi::path_of("state.order.create"), "/v1/state.order/create");
/// ```
pub fn path_of(full_name: &str) -> String {
    match full_name.rsplit_once('.') {
        Some((service, method)) => format!("/v1/{service}/{method}"),
        None => format!("/v1/{full_name}"),
    }
}

/// Every stable error code, for the error schema.
const CODES: [Code; 17] = [
    Code::Cancelled,
    Code::InvalidInput,
    Code::NotFound,
    Code::DeadlineExceeded,
    Code::Unauthenticated,
    Code::PermissionDenied,
    Code::Unavailable,
    Code::Busy,
    Code::TooLarge,
    Code::Internal,
    Code::Unsupported,
    Code::VersionMismatch,
    Code::UnknownMethod,
    Code::Malformed,
    Code::AlreadyExists,
    Code::FailedPrecondition,
    Code::Unknown,
];

/// The error statuses every operation may answer.
const ERROR_STATUSES: [u16; 12] = [400, 401, 403, 404, 409, 413, 415, 429, 500, 501, 503, 504];

fn error_response() -> Json {
    json!({
        "description": "the call failed: polycall's code and a message",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

/// The responses of an operation: `ok` with the reply, the error statuses, 410 when its
/// version has a sunset, and the route's own statuses.
fn responses(
    kind: CallKind,
    ok: u16,
    sunset: bool,
    extra: impl IntoIterator<Item = u16>,
) -> Map<String, Json> {
    let mut responses = Map::new();
    let reply = if kind.streams_replies() {
        json!({
            "description": "the reply messages as Server-Sent Events: `message` (JSON) or `binary` (base64) events, then `end` or `error`",
            "content": {"text/event-stream": {"schema": {
                "type": "object",
                "description": "one event",
                "properties": {
                    "event": {"type": "string", "enum": ["message", "binary", "end", "error"]},
                    "id": {"type": "string"},
                    "data": {"type": "string"}
                }
            }}}
        })
    } else {
        json!({
            "description": "the method's reply",
            "content": {"application/json": {"schema": {}}, "application/octet-stream": {"schema": {}}}
        })
    };
    responses.insert(ok.to_string(), reply);
    let sunset = sunset.then_some(410);
    for status in ERROR_STATUSES.into_iter().chain(sunset).chain(extra) {
        responses
            .entry(status.to_string())
            .or_insert_with(error_response);
    }
    responses
}

fn describe_io(input: &str, output: &str) -> String {
    let mut description = String::new();
    if !input.is_empty() {
        description.push_str(&format!("Input: `{input}`."));
    }
    if !output.is_empty() {
        if !description.is_empty() {
            description.push(' ');
        }
        description.push_str(&format!("Output: `{output}`."));
    }
    description
}

/// A request body's schema: any JSON, or an array of messages for a method that
/// streams its requests.
fn request_schema(kind: CallKind) -> Json {
    if kind.streams_requests() {
        json!({"type": "array", "description": "the request messages, in order"})
    } else {
        json!({})
    }
}

fn timeout_parameter() -> Json {
    json!({
        "name": "Polycall-Timeout-Ms",
        "in": "header",
        "required": false,
        "description": "the call's deadline, in milliseconds",
        "schema": {"type": "integer", "minimum": 1}
    })
}

/// The OpenAPI 3.1 document of `methods` at their own paths (unless `routes` exposes
/// only its routes) and of the configured `routes`. A method that streams its replies
/// answers `text/event-stream`; one that streams its requests takes a JSON array.
/// Bodies are JSON of any shape: a method's input and output hints are free text,
/// given in its description.
pub fn document(
    methods: &[MethodDescription],
    routes: Option<&Routes>,
    title: &str,
    version: &str,
) -> Json {
    let mut paths = Map::new();
    let v1 = routes.map(|r| r.version("v1").clone());
    if routes.is_none_or(|r| r.expose_methods) {
        for m in methods {
            let operation = json!({
                "operationId": m.name,
                "summary": m.info.summary,
                "description": describe_io(&m.info.input, &m.info.output),
                "tags": [m.name.rsplit_once('.').map_or(m.name.as_str(), |(s, _)| s)],
                "deprecated": v1.as_ref().is_some_and(|v| v.is_deprecated()),
                "requestBody": {
                    "required": false,
                    "content": {"application/json": {"schema": request_schema(m.info.kind)}}
                },
                "parameters": [timeout_parameter()],
                "responses": responses(m.info.kind, 200, v1.as_ref().is_some_and(|v| v.sunset.is_some()), []),
                "x-polycall-idempotent": m.info.idempotent,
            });
            paths.insert(path_of(&m.name), json!({ "post": operation }));
        }
    }
    for route in routes.map_or(&[][..], |r| &r.routes[..]) {
        let method = methods.iter().find(|m| m.name == route.call);
        let kind = method.map_or(CallKind::Unary, |m| m.info.kind);
        let mut parameters = vec![timeout_parameter()];
        for segment in &route.segments {
            if let Segment::Param(name) = segment {
                let ty = route
                    .parameters()
                    .find_map(|s| match s {
                        Source::Path(p, ty) if p == name => Some(*ty),
                        _ => None,
                    })
                    .unwrap_or(Type::String);
                parameters.push(
                    json!({"name": name, "in": "path", "required": true, "schema": ty.schema()}),
                );
            }
        }
        for source in route.parameters() {
            let (place, name, ty) = match source {
                Source::Query(n, ty) => ("query", n, ty),
                Source::Header(n, ty) => ("header", n, ty),
                _ => continue,
            };
            parameters
                .push(json!({"name": name, "in": place, "required": false, "schema": ty.schema()}));
        }
        let summary = if route.summary.is_empty() {
            method.map_or_else(String::new, |m| m.info.summary.clone())
        } else {
            route.summary.clone()
        };
        let mut operation = json!({
            "operationId": route
                .template
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .fold(route.method.as_str().to_ascii_lowercase(), |mut id, c| { id.push(c); id }),
            "summary": summary,
            "description": format!(
                "Calls `{}`. {}",
                route.call,
                method.map_or_else(String::new, |m| describe_io(&m.info.input, &m.info.output))
            ),
            "tags": [route.version.name.clone()],
            "deprecated": route.version.is_deprecated(),
            "parameters": parameters,
            "responses": responses(
                kind,
                route.ok.as_u16(),
                route.version.sunset.is_some(),
                route.statuses.iter().map(|(_, s)| s.as_u16()),
            ),
        });
        if route.takes_body() {
            let schema = if kind.streams_requests() {
                request_schema(kind)
            } else if route.input.is_passthrough() || route.input.maps_body() {
                json!({})
            } else {
                json!({"type": "object"})
            };
            operation["requestBody"] = json!({
                "required": false,
                "content": {"application/json": {"schema": schema}}
            });
        }
        let entry = paths
            .entry(route.template.clone())
            .or_insert_with(|| json!({}));
        entry[route.method.as_str().to_ascii_lowercase()] = operation;
    }
    let mut schemes = Map::new();
    schemes.insert("bearer".into(), json!({"type": "http", "scheme": "bearer"}));
    let security = match routes.filter(|r| r.uses_keys()) {
        Some(r) => {
            schemes.insert(
                "apiKey".into(),
                json!({"type": "apiKey", "in": "header", "name": r.key_header().as_str()}),
            );
            if r.require_key {
                json!([{"apiKey": []}, {"apiKey": [], "bearer": []}])
            } else {
                json!([{}, {"bearer": []}, {"apiKey": []}, {"apiKey": [], "bearer": []}])
            }
        }
        None => json!([{}, {"bearer": []}]),
    };
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "The polycall methods this server serves over HTTP: each at POST /v1/{service}/{method} with a JSON body, and the configured routes.",
        },
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string", "enum": CODES.iter().map(|c| c.name()).collect::<Vec<_>>()},
                        "message": {"type": "string"}
                    }
                }
            },
            "securitySchemes": schemes
        },
        "security": security,
    })
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A self-contained HTML page (no scripts, no external files) listing `methods`.
pub fn docs_page(methods: &[MethodDescription], routes: Option<&Routes>, title: &str) -> String {
    let mut rows = String::new();
    let expose = routes.is_none_or(|r| r.expose_methods);
    for m in methods {
        let mut how: Vec<String> = routes
            .map(|r| r.http_of(&m.name))
            .unwrap_or_default()
            .into_iter()
            .filter(|h| !(h.method == "POST" && h.path == path_of(&m.name)))
            .map(|h| {
                format!(
                    "<code>{} {}</code>{}",
                    h.method,
                    escape(&h.path),
                    if h.deprecated { " (deprecated)" } else { "" }
                )
            })
            .collect();
        if expose {
            how.insert(
                0,
                format!("<code>POST {}</code>", escape(&path_of(&m.name))),
            );
        }
        match m.info.kind {
            CallKind::Unary => {}
            CallKind::ServerStream => how.push("replies as Server-Sent Events".into()),
            CallKind::ClientStream => how.push("requests as a JSON array".into()),
            CallKind::Bidi => {
                how.push("requests as a JSON array, replies as Server-Sent Events".into())
            }
        }
        if how.is_empty() {
            continue;
        }
        let how = how.join("<br>");
        rows.push_str(&format!(
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>\n",
            escape(&m.name),
            how,
            escape(&m.info.summary),
            escape(&m.info.input),
            escape(&m.info.output),
        ));
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}}</style></head>\
         <body><h1>{t}</h1><p>Call a method with <code>POST /v1/{{service}}/{{method}}</code> and a JSON body; \
         errors answer <code>{{\"code\", \"message\"}}</code>. The OpenAPI 3.1 document: \
         <a href=\"/openapi.json\">/openapi.json</a>.</p>\
         <table><tr><th>method</th><th>HTTP</th><th>summary</th><th>input</th><th>output</th></tr>\n{rows}</table></body></html>\n",
        t = escape(title),
    )
}
