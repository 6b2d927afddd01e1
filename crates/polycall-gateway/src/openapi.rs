//! The OpenAPI 3.1 document and the docs page, generated from the served methods.

use polycall_core::{CallKind, Code, MethodDescription};
use serde_json::{Map, Value as Json, json};

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

/// The OpenAPI 3.1 document of `methods` (streaming methods are left out: they are not
/// served over HTTP yet). Bodies are JSON of any shape: a method's input and output
/// hints are free text, given in its description.
pub fn document(methods: &[MethodDescription], title: &str, version: &str) -> Json {
    let mut paths = Map::new();
    for m in methods.iter().filter(|m| m.info.kind == CallKind::Unary) {
        let mut description = String::new();
        if !m.info.input.is_empty() {
            description.push_str(&format!("Input: `{}`.", m.info.input));
        }
        if !m.info.output.is_empty() {
            if !description.is_empty() {
                description.push(' ');
            }
            description.push_str(&format!("Output: `{}`.", m.info.output));
        }
        let error = json!({
            "description": "the call failed: polycall's code and a message",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        });
        let mut responses = Map::new();
        responses.insert(
            "200".into(),
            json!({
                "description": "the method's reply",
                "content": {"application/json": {"schema": {}}, "application/octet-stream": {"schema": {}}}
            }),
        );
        for status in [
            "400", "401", "403", "404", "409", "413", "415", "429", "500", "501", "503", "504",
        ] {
            responses.insert(status.into(), error.clone());
        }
        let operation = json!({
            "operationId": m.name,
            "summary": m.info.summary,
            "description": description,
            "tags": [m.name.rsplit_once('.').map_or(m.name.as_str(), |(s, _)| s)],
            "requestBody": {
                "required": false,
                "content": {"application/json": {"schema": {}}}
            },
            "parameters": [{
                "name": "Polycall-Timeout-Ms",
                "in": "header",
                "required": false,
                "description": "the call's deadline, in milliseconds",
                "schema": {"type": "integer", "minimum": 1}
            }],
            "responses": responses,
            "x-polycall-idempotent": m.info.idempotent,
        });
        paths.insert(path_of(&m.name), json!({ "post": operation }));
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "Every polycall method this server serves, called with POST /v1/{service}/{method} and a JSON body.",
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
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        },
        "security": [{}, {"bearer": []}],
    })
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A self-contained HTML page (no scripts, no external files) listing `methods`.
pub fn docs_page(methods: &[MethodDescription], title: &str) -> String {
    let mut rows = String::new();
    for m in methods {
        let how = if m.info.kind == CallKind::Unary {
            format!("<code>POST {}</code>", escape(&path_of(&m.name)))
        } else {
            "streaming (not over HTTP yet)".to_string()
        };
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
