//! Configured routes: path templates and HTTP methods mapped onto calls, with their
//! input and output transformation, status mapping, API version and limits, and the
//! API keys requests may carry.
//!
//! A [`RouteFile`] (TOML, `gateway.routes` in polycall.toml) is compiled into
//! [`Routes`]; [`Routes::check`] checks a file without reading its secrets (what
//! `polycall config validate` does).

mod file;
pub(crate) mod transform;

use std::collections::BTreeMap;
use std::sync::Arc;

use hyper::Method;
use hyper::header::{HeaderMap, HeaderName};
use polycall_core::{Code, Status};
use polycall_security::SecretRef;
use polycall_security::token::constant_time_eq;

pub use file::{KeySpec, OutputSpec, RouteFile, RouteFileError, RouteSpec, VersionSpec};

use crate::limits::{Concurrency, Rate, WindowQuota};
use crate::versions::Version;
use transform::{Input, Output, Source, field_path};

/// The compiled routes file: what [`GatewayConfig::routes`](crate::GatewayConfig::routes)
/// serves.
pub struct Routes {
    pub(crate) expose_methods: bool,
    pub(crate) require_key: bool,
    key_header: HeaderName,
    keys: Vec<ApiKey>,
    /// Every version a route or the file names; `v1` always (the methods' own paths).
    versions: BTreeMap<String, Arc<Version>>,
    pub(crate) routes: Vec<Route>,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes")
            .field("expose_methods", &self.expose_methods)
            .field("routes", &self.routes.len())
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// An HTTP route of a method, as `sys.describe` and `polycall describe` show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct HttpRoute {
    /// The API version (`v1`).
    pub version: String,
    /// The HTTP method.
    pub method: String,
    /// The served path template (`/v2/items/{id}`).
    pub path: String,
    /// Whether the version is deprecated.
    pub deprecated: bool,
}

impl HttpRoute {
    /// A method's own path: `POST /v1/{service}/{method}`.
    pub fn method_path(name: &str) -> Self {
        Self {
            version: "v1".into(),
            method: "POST".into(),
            path: crate::openapi::path_of(name),
            deprecated: false,
        }
    }
}

struct ApiKey {
    name: String,
    secret: Vec<u8>,
    rate: Option<Rate>,
    quota: Option<WindowQuota>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Literal(String),
    Param(String),
}

/// One compiled route.
pub(crate) struct Route {
    pub(crate) version: Arc<Version>,
    pub(crate) method: Method,
    pub(crate) segments: Vec<Segment>,
    /// The served path template, `/v2/items/{id}`.
    pub(crate) template: String,
    /// `service.method`.
    pub(crate) call: String,
    pub(crate) summary: String,
    pub(crate) input: Input,
    pub(crate) output: Output,
    pub(crate) ok: hyper::StatusCode,
    pub(crate) statuses: Vec<(Code, hyper::StatusCode)>,
    pub(crate) rate: Option<Rate>,
    pub(crate) concurrency: Option<Concurrency>,
}

impl Route {
    /// The HTTP status of a failed call on this route.
    pub(crate) fn status_of(&self, code: Code) -> Option<hyper::StatusCode> {
        self.statuses
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, s)| *s)
    }

    /// Where the route's parameters come from (for the OpenAPI document).
    pub(crate) fn parameters(&self) -> impl Iterator<Item = &Source> {
        self.input.fields.iter().map(|(_, s)| s)
    }

    /// Whether the route reads a request body.
    pub(crate) fn takes_body(&self) -> bool {
        matches!(self.method, Method::POST | Method::PUT | Method::PATCH)
    }
}

/// What a request's path finds.
pub(crate) enum Found<'a> {
    /// A route and its path parameters (percent-decoded).
    Route(&'a Route, Vec<(String, String)>),
    /// The path is routed, not for this HTTP method: these are.
    WrongMethod(Vec<Method>),
    /// No route.
    None,
}

/// An API key the request proved.
pub(crate) struct KeyUse<'a> {
    key: &'a ApiKey,
}

impl Routes {
    /// Checks `file` — paths, sources, statuses, versions, key references — without
    /// reading any secret. Every problem is reported, one per line.
    pub fn check(file: &RouteFile) -> Result<(), RouteFileError> {
        Self::build(file, false).map(drop)
    }

    /// Compiles `file`, reading every API key's secret.
    pub fn compile(file: &RouteFile) -> Result<Self, RouteFileError> {
        Self::build(file, true)
    }

    /// The routes of `service.method`.
    pub fn http_of(&self, method: &str) -> Vec<HttpRoute> {
        let mut out: Vec<HttpRoute> = self
            .routes
            .iter()
            .filter(|r| r.call == method)
            .map(|r| HttpRoute {
                version: r.version.name.clone(),
                method: r.method.to_string(),
                path: r.template.clone(),
                deprecated: r.version.is_deprecated(),
            })
            .collect();
        if self.expose_methods {
            out.push(HttpRoute {
                deprecated: self.versions["v1"].is_deprecated(),
                ..HttpRoute::method_path(method)
            });
        }
        out
    }

    /// The version `name` (`v1` always exists).
    pub(crate) fn version(&self, name: &str) -> &Arc<Version> {
        self.versions.get(name).unwrap_or(&self.versions["v1"])
    }

    /// Whether API keys are configured or required (the OpenAPI document says so).
    pub(crate) fn uses_keys(&self) -> bool {
        self.require_key || !self.keys.is_empty()
    }

    pub(crate) fn key_header(&self) -> &HeaderName {
        &self.key_header
    }

    /// Finds the route of `method` `path`.
    pub(crate) fn find(&self, method: &Method, path: &str) -> Found<'_> {
        let parts: Vec<&str> = path.split('/').skip(1).collect();
        let mut allowed = Vec::new();
        for route in &self.routes {
            let Some(params) = route.matches(&parts) else {
                continue;
            };
            if route.method == *method || (*method == Method::HEAD && route.method == Method::GET) {
                return Found::Route(route, params);
            }
            if !allowed.contains(&route.method) {
                allowed.push(route.method.clone());
            }
        }
        if allowed.is_empty() {
            Found::None
        } else {
            Found::WrongMethod(allowed)
        }
    }

    /// The API key of `headers`: `Ok(None)` without one (refused when keys are
    /// required), `unauthenticated` for a key no entry has.
    pub(crate) fn key(&self, headers: &HeaderMap) -> Result<Option<KeyUse<'_>>, Status> {
        let Some(sent) = headers.get(&self.key_header) else {
            return if self.require_key {
                Err(Status::unauthenticated(format!(
                    "this API requires an API key in the {} header",
                    self.key_header
                )))
            } else {
                Ok(None)
            };
        };
        // Every key is compared, so the time taken says nothing of which one is near.
        let mut found = None;
        for key in &self.keys {
            if constant_time_eq(sent.as_bytes(), &key.secret) && found.is_none() {
                found = Some(key);
            }
        }
        match found {
            Some(key) => Ok(Some(KeyUse { key })),
            None => Err(Status::unauthenticated(format!(
                "the API key in the {} header is not accepted",
                self.key_header
            ))),
        }
    }

    fn build(file: &RouteFile, read_secrets: bool) -> Result<Self, RouteFileError> {
        let mut problems = Vec::new();
        let key_header = HeaderName::try_from(file.key_header.to_ascii_lowercase())
            .map_err(|_| {
                problems.push(format!(
                    "key_header {:?} is not a header name",
                    file.key_header
                ))
            })
            .unwrap_or(HeaderName::from_static("x-api-key"));
        let mut versions: BTreeMap<String, Arc<Version>> = BTreeMap::new();
        for (name, spec) in &file.versions {
            if let Err(e) = version_name(name) {
                problems.push(format!("versions.{name}: {e}"));
            }
            match Version::new(name, spec) {
                Ok(v) => {
                    versions.insert(name.clone(), Arc::new(v));
                }
                Err(e) => problems.push(e),
            }
        }
        let mut keys = Vec::new();
        for (name, spec) in &file.keys {
            if !spec.key.starts_with("env:") && !spec.key.starts_with("file:") {
                // Never echo it: it may be the key itself.
                problems.push(format!(
                    "keys.{name}.key: not a secret reference; write env:NAME or file:PATH, never the key itself"
                ));
                continue;
            }
            let reference = match spec.key.parse::<SecretRef>() {
                Ok(r) => r,
                Err(e) => {
                    problems.push(format!(
                        "keys.{name}.key: {e} (write env:NAME or file:PATH, never the key itself)"
                    ));
                    continue;
                }
            };
            if spec.quota == Some(0) || spec.rate == Some(0) {
                problems.push(format!(
                    "keys.{name}: a rate or quota of 0 refuses every request; remove the key instead"
                ));
            }
            let secret = if read_secrets {
                match reference.read() {
                    Ok(s) => trim(s),
                    Err(e) => {
                        problems.push(format!("keys.{name}.key: {e}"));
                        continue;
                    }
                }
            } else {
                Vec::new()
            };
            keys.push(ApiKey {
                name: name.clone(),
                secret,
                rate: spec.rate.map(|r| Rate::new(r, spec.burst)),
                quota: spec.quota.map(|q| {
                    WindowQuota::new(q, std::time::Duration::from_secs(spec.quota_window_s))
                }),
            });
        }
        if file.require_key && file.keys.is_empty() {
            problems.push(
                "require_key = true, but [keys] lists none: every request would be refused".into(),
            );
        }
        let mut routes = Vec::new();
        for (i, spec) in file.routes.iter().enumerate() {
            let version = versions
                .entry(spec.version.clone())
                .or_insert_with(|| Arc::new(Version::current(&spec.version)))
                .clone();
            match compile_route(spec, version) {
                Ok(r) => routes.push(r),
                Err(e) => {
                    problems.push(format!("routes[{i}] ({} {}): {e}", spec.method, spec.path))
                }
            }
        }
        versions
            .entry("v1".into())
            .or_insert_with(|| Arc::new(Version::current("v1")));
        for (i, a) in routes.iter().enumerate() {
            if let Some(b) = routes[..i]
                .iter()
                .find(|b| b.method == a.method && b.segments == a.segments)
            {
                problems.push(format!(
                    "routes: {} {} is routed twice ({} and {})",
                    a.method, a.template, b.call, a.call
                ));
            }
        }
        if !problems.is_empty() {
            return Err(RouteFileError(problems.join("\n")));
        }
        // The most literal template first: /items/new before /items/{id}.
        routes.sort_by(|a, b| {
            let rank = |r: &Route| {
                r.segments
                    .iter()
                    .map(|s| matches!(s, Segment::Param(_)))
                    .collect::<Vec<_>>()
            };
            rank(a).cmp(&rank(b))
        });
        Ok(Self {
            expose_methods: file.expose_methods,
            require_key: file.require_key,
            key_header,
            keys,
            versions,
            routes,
        })
    }
}

impl KeyUse<'_> {
    /// Takes one request of the key's rate and quota.
    pub(crate) fn admit(&self) -> Result<(), Status> {
        let what = format!("API key {}", self.key.name);
        if let Some(rate) = &self.key.rate {
            rate.check(&what)?;
        }
        if let Some(quota) = &self.key.quota {
            quota.take(&what)?;
        }
        Ok(())
    }
}

impl Route {
    fn matches(&self, parts: &[&str]) -> Option<Vec<(String, String)>> {
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut params = Vec::new();
        for (seg, part) in self.segments.iter().zip(parts) {
            match seg {
                Segment::Literal(l) if l == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(_) if part.is_empty() => return None,
                Segment::Param(name) => params.push((
                    name.clone(),
                    percent_encoding::percent_decode_str(part)
                        .decode_utf8_lossy()
                        .into_owned(),
                )),
            }
        }
        Some(params)
    }
}

fn trim(mut secret: Vec<u8>) -> Vec<u8> {
    while secret.last().is_some_and(u8::is_ascii_whitespace) {
        secret.pop();
    }
    secret
}

fn version_name(name: &str) -> Result<(), String> {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        Ok(())
    } else {
        Err(format!(
            "version {name:?} must be lower-case letters, digits, dots and dashes (v1, v2beta)"
        ))
    }
}

fn compile_route(spec: &RouteSpec, version: Arc<Version>) -> Result<Route, String> {
    version_name(&spec.version)?;
    let method = match spec.method.to_ascii_uppercase().as_str() {
        "GET" => Method::GET,
        "POST" => Method::POST,
        "PUT" => Method::PUT,
        "PATCH" => Method::PATCH,
        "DELETE" => Method::DELETE,
        other => {
            return Err(format!(
                "method {other:?} is not GET, POST, PUT, PATCH or DELETE"
            ));
        }
    };
    if !spec.path.starts_with('/') {
        return Err(format!("path {:?} must start with /", spec.path));
    }
    let mut segments = vec![Segment::Literal(spec.version.clone())];
    for part in spec.path.split('/').skip(1) {
        if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!(
                    "path parameter {{{name}}} must be a name of letters, digits and _"
                ));
            }
            if segments.contains(&Segment::Param(name.to_owned())) {
                return Err(format!("path parameter {{{name}}} appears twice"));
            }
            segments.push(Segment::Param(name.to_owned()));
        } else if part.is_empty() || part.contains(['{', '}', '?', '#', '%']) {
            return Err(format!(
                "path segment {part:?} is empty or holds {{, }}, ?, # or %: parameters are whole segments, {{name}}"
            ));
        } else {
            segments.push(Segment::Literal(part.to_owned()));
        }
    }
    let Some((service, name)) = spec.call.rsplit_once('.') else {
        return Err(format!("call {:?} must be service.method", spec.call));
    };
    polycall_core::ServiceName::new(service).map_err(|e| format!("call {:?}: {e}", spec.call))?;
    polycall_core::MethodName::new(name).map_err(|e| format!("call {:?}: {e}", spec.call))?;
    let mut input = Input::default();
    for (field, source) in &spec.input {
        let source = Source::parse(source)?;
        if let Source::Path(p, _) = &source
            && !segments.contains(&Segment::Param(p.clone()))
        {
            return Err(format!(
                "input.{field} reads path parameter {{{p}}}, which the path has not"
            ));
        }
        if matches!(source, Source::Body | Source::BodyField(_))
            && !matches!(method, Method::POST | Method::PUT | Method::PATCH)
        {
            return Err(format!(
                "input.{field} reads the body of a {method} request, which has none"
            ));
        }
        input.fields.push((field_path(field)?, source));
    }
    for (field, value) in &spec.defaults {
        input.defaults.push((field_path(field)?, value.clone()));
    }
    let output = Output {
        pick: spec.output.pick.as_deref().map(field_path).transpose()?,
        rename: spec.output.rename.clone(),
        omit: spec.output.omit.clone(),
    };
    let mut ok = hyper::StatusCode::OK;
    let mut statuses = Vec::new();
    for (outcome, status) in &spec.status {
        let code = hyper::StatusCode::from_u16(*status)
            .ok()
            .filter(|_| (100..=599).contains(status))
            .ok_or_else(|| format!("status.{outcome} = {status} is not an HTTP status"))?;
        if outcome == "ok" {
            if !code.is_success() {
                return Err(format!("status.ok = {status} is not a 2xx status"));
            }
            ok = code;
        } else {
            let c = Code::from_name(outcome)
                .filter(|c| *c != Code::Ok)
                .ok_or_else(|| {
                    format!(
                        "status.{outcome}: not a polycall code; use ok or one of {}",
                        Code::ALL
                            .iter()
                            .filter(|c| **c != Code::Ok)
                            .map(|c| c.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
            if code.is_success() || code.is_informational() {
                return Err(format!(
                    "status.{outcome} = {status}: a failure needs a 3xx, 4xx or 5xx status"
                ));
            }
            statuses.push((c, code));
        }
    }
    if spec.rate == Some(0) || spec.concurrency == Some(0) {
        return Err(
            "a rate or concurrency of 0 refuses every request; remove the route instead".into(),
        );
    }
    Ok(Route {
        template: format!("/{}{}", spec.version, spec.path),
        version,
        method,
        segments,
        call: spec.call.clone(),
        summary: spec.summary.clone(),
        input,
        output,
        ok,
        statuses,
        rate: spec.rate.map(|r| Rate::new(r, spec.burst)),
        concurrency: spec.concurrency.map(Concurrency::new),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(text: &str) -> Result<Routes, RouteFileError> {
        Routes::compile(&RouteFile::parse(text).unwrap())
    }

    #[test]
    fn the_most_literal_route_wins_and_methods_are_told() {
        let r = routes(
            r#"
            [[routes]]
            method = "GET"
            path = "/items/{id}"
            call = "inventory.get"
            [[routes]]
            method = "GET"
            path = "/items/new"
            call = "inventory.blank"
            [[routes]]
            version = "v2"
            method = "DELETE"
            path = "/items/{id}"
            call = "inventory.remove"
            "#,
        )
        .unwrap();
        let call = |m: Method, p: &str| match r.find(&m, p) {
            Found::Route(route, params) => format!("{} {params:?}", route.call),
            Found::WrongMethod(allowed) => format!("405 {allowed:?}"),
            Found::None => "404".into(),
        };
        assert_eq!(call(Method::GET, "/v1/items/new"), "inventory.blank []");
        assert_eq!(
            call(Method::GET, "/v1/items/a%20b"),
            r#"inventory.get [("id", "a b")]"#
        );
        assert_eq!(call(Method::GET, "/v2/items/7"), "405 [DELETE]");
        assert_eq!(call(Method::GET, "/v1/items/"), "404");
        assert_eq!(call(Method::GET, "/v1/items/7/x"), "404");
        assert_eq!(r.http_of("inventory.remove")[0].path, "/v2/items/{id}");
    }

    #[test]
    fn every_mistake_is_reported_with_its_route() {
        let e = routes(
            r#"
            require_key = true
            [versions.V1]
            [keys.partner]
            key = "plaintext-key"
            [[routes]]
            method = "FETCH"
            path = "/x"
            call = "a.b"
            [[routes]]
            method = "GET"
            path = "/items/{id}"
            call = "inventory.get"
            input = { item = "path.item_id" }
            [[routes]]
            method = "GET"
            path = "/y"
            call = "a.b"
            status = { not_a_code = 404 }
            [[routes]]
            method = "GET"
            path = "/z"
            call = "a.b"
            input = { x = "body" }
            "#,
        )
        .unwrap_err()
        .0;
        for expected in [
            "versions.V1: version \"V1\" must be lower-case",
            "keys.partner.key:",
            "routes[0] (FETCH /x): method \"FETCH\"",
            "routes[1] (GET /items/{id}): input.item reads path parameter {item_id}",
            "routes[2] (GET /y): status.not_a_code: not a polycall code",
            "routes[3] (GET /z): input.x reads the body of a GET request",
        ] {
            assert!(e.contains(expected), "{expected:?} not in:\n{e}");
        }
    }

    #[test]
    fn api_keys_are_read_from_references_and_compared_whole() {
        let dir = std::env::temp_dir().join(format!("polycall-gw-key-{}", std::process::id()));
        std::fs::write(&dir, "s3cret\n").unwrap();
        let r = routes(&format!(
            "require_key = true\n[keys.partner]\nkey = \"file:{}\"\nquota = 1\n",
            dir.display()
        ))
        .unwrap();
        std::fs::remove_file(&dir).unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(r.key(&h).err().unwrap().code, Code::Unauthenticated);
        h.insert("x-api-key", "s3cre".parse().unwrap());
        assert_eq!(r.key(&h).err().unwrap().code, Code::Unauthenticated);
        h.insert("x-api-key", "s3cret".parse().unwrap());
        let key = r.key(&h).unwrap().unwrap();
        key.admit().unwrap();
        assert_eq!(key.admit().unwrap_err().code, Code::Busy);
    }
}
