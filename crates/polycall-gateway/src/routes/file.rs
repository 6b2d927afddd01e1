//! The routes file as written (`gateway.routes` in polycall.toml): read here, checked
//! and compiled by [`Routes`](super::Routes).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// The routes file: which methods the gateway exposes, at which paths, under which API
/// versions and limits.
///
/// ```toml
/// expose_methods = true          # also POST /v1/{service}/{method} for every method
/// require_key = false            # every request must carry an API key
///
/// [versions.v1]
/// deprecated = 2026-11-01T00:00:00Z
/// sunset = 2027-06-30T00:00:00Z
/// link = "https://example.org/api/v2"
///
/// [keys.partner]
/// key = "env:PARTNER_API_KEY"    # a secret reference, never the key
/// rate = 20                      # requests per second, bursts of `burst`
/// quota = 10000                  # requests per `quota_window_s` (default a day)
///
/// [[routes]]
/// version = "v2"
/// method = "GET"
/// path = "/items/{id}"           # served at /v2/items/{id}
/// call = "inventory.get"
/// input = { item_id = "path.id:int", verbose = "query.verbose:bool" }
/// defaults = { verbose = false }
/// output = { rename = { item_id = "id" }, omit = ["cost"] }
/// status = { not_found = 404, failed_precondition = 422 }
/// rate = 100
/// concurrency = 32
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RouteFile {
    /// Serve every method at `POST /v1/{service}/{method}` besides the routes (default
    /// true). `false`: only the routes are served.
    #[serde(default = "yes")]
    pub expose_methods: bool,
    /// Every request must carry a valid API key (default false: a key, when sent, must
    /// be valid and its limits apply).
    #[serde(default)]
    pub require_key: bool,
    /// The request header carrying the API key (default `X-Api-Key`).
    #[serde(default = "default_key_header")]
    pub key_header: String,
    /// API versions by name (`v1`, `v2`): deprecation and sunset.
    #[serde(default)]
    pub versions: BTreeMap<String, VersionSpec>,
    /// API keys by name.
    #[serde(default)]
    pub keys: BTreeMap<String, KeySpec>,
    /// The routes, in order; the most literal path wins when several match.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
}

fn yes() -> bool {
    true
}

fn default_key_header() -> String {
    "x-api-key".into()
}

fn default_version() -> String {
    "v1".into()
}

fn default_quota_window() -> u64 {
    86_400
}

/// One API version's life.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct VersionSpec {
    /// When the version is (or will be) deprecated: its answers carry `Deprecation`.
    pub deprecated: Option<toml::value::Datetime>,
    /// When it stops being served: answers carry `Sunset` before, 410 after.
    pub sunset: Option<toml::value::Datetime>,
    /// Where to read about the change (`Link: <…>; rel="deprecation"`).
    pub link: Option<String>,
}

/// One API key: its secret and its limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct KeySpec {
    /// The key, as a secret reference (`env:NAME` or `file:PATH`).
    pub key: String,
    /// Sustained requests per second (unset: unlimited).
    pub rate: Option<u32>,
    /// Requests at once after a quiet period (default `rate`).
    pub burst: Option<u32>,
    /// Requests per quota window (unset: unlimited).
    pub quota: Option<u64>,
    /// The quota window in seconds (default 86400, a day).
    #[serde(default = "default_quota_window")]
    pub quota_window_s: u64,
}

/// One route: an HTTP method and path template mapped onto a call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RouteSpec {
    /// The API version the route belongs to; the path is served under `/{version}`
    /// (default `v1`).
    #[serde(default = "default_version")]
    pub version: String,
    /// The HTTP method (`GET`, `POST`, `PUT`, `PATCH`, `DELETE`).
    pub method: String,
    /// The path template below the version: `/items/{id}`.
    pub path: String,
    /// The method called: `service.method`.
    pub call: String,
    /// One line for the OpenAPI document and the docs page.
    #[serde(default)]
    pub summary: String,
    /// The call's input fields and where each comes from: `path.NAME`, `query.NAME`,
    /// `header.NAME` (each optionally typed `:int`, `:number`, `:bool`, `:json`;
    /// default a string), `body` or `body.FIELD`. Without any `body` source, a JSON
    /// object body is the base the fields are set on. A field name may be dotted
    /// (`filter.owner`) to nest.
    #[serde(default)]
    pub input: BTreeMap<String, String>,
    /// Values of input fields the request did not give.
    #[serde(default)]
    pub defaults: BTreeMap<String, serde_json::Value>,
    /// How a JSON reply is reshaped.
    #[serde(default)]
    pub output: OutputSpec,
    /// HTTP statuses by outcome: `ok` (default 200) or a polycall code name
    /// (`not_found = 410`).
    #[serde(default)]
    pub status: BTreeMap<String, u16>,
    /// Requests per second over every caller of the route (unset: unlimited).
    pub rate: Option<u32>,
    /// Requests at once after a quiet period (default `rate`).
    pub burst: Option<u32>,
    /// Requests in progress at once; more are answered 503 (unset: unlimited).
    pub concurrency: Option<usize>,
}

/// How a JSON reply is reshaped, in this order: `pick`, `rename`, `omit`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct OutputSpec {
    /// Answer only this (dotted) field of the reply.
    pub pick: Option<String>,
    /// Rename top-level fields: `from = "to"`.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Leave out these top-level fields.
    #[serde(default)]
    pub omit: Vec<String>,
}

/// A routes file that could not be read or is wrong.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct RouteFileError(pub String);

impl RouteFile {
    /// Reads and parses the file (compile it with [`Routes`](super::Routes) to check
    /// the routes themselves).
    pub fn read(path: &Path) -> Result<Self, RouteFileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| RouteFileError(format!("{}: cannot read: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| RouteFileError(format!("{}: {}", path.display(), e.0)))
    }

    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<Self, RouteFileError> {
        toml::from_str(text).map_err(|e| RouteFileError(e.to_string().trim_end().to_owned()))
    }
}
