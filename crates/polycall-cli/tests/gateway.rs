//! The HTTP gateway of `polycall run --http`: real processes, requests by curl (HTTP/1.1
//! and h2c), the OpenAPI document checked by PyPI's openapi-spec-validator.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// An answer: status, HTTP version, headers (lower-case names) and body.
#[derive(Debug)]
struct Answer {
    status: u16,
    version: String,
    headers: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// `curl` with `args`, `body` posted when given.
fn curl(addr: &str, method: &str, path: &str, body: Option<&str>, args: &[&str]) -> Answer {
    let dir = std::env::temp_dir().join(format!(
        "polycall-gateway-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let headers = dir.join("headers");
    let mut c = Command::new("curl");
    c.args(["-s", "-S", "--max-time", "10", "-X", method, "-D"])
        .arg(&headers)
        .args(["-w", "\n%{http_code} %{http_version}"])
        .args(args);
    if let Some(b) = body {
        c.args(["--data-binary", b]);
    }
    let out = c
        .arg(format!("http://{addr}{path}"))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run curl (Debian package curl; `cargo xtask ci` installs it): {e}")
        });
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, tail) = text.rsplit_once('\n').unwrap();
    let (status, version) = tail.split_once(' ').unwrap();
    Answer {
        status: status.parse().unwrap(),
        version: version.to_string(),
        headers: std::fs::read_to_string(&headers).unwrap_or_default(),
        body: body.to_string(),
    }
}

fn post(addr: &str, path: &str, body: &str, args: &[&str]) -> Answer {
    let mut all = vec!["-H", "content-type: application/json"];
    all.extend_from_slice(args);
    curl(addr, "POST", path, Some(body), &all)
}

/// Waits for `--http-file` to name the bound address.
fn http_addr(file: &Path) -> String {
    let started = Instant::now();
    loop {
        if let Ok(t) = std::fs::read_to_string(file)
            && t.ends_with('\n')
        {
            return t.trim().to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the gateway did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A request that fails: method, path, body, curl arguments, HTTP status, polycall code.
type ErrorCase<'a> = (&'a str, &'a str, &'a str, &'a [&'a str], u16, &'a str);

#[test]
fn http_calls_reach_the_runtime_methods_with_typed_errors() {
    let dir = polycall_test_support::TempDir::new("gateway");
    let file = dir.join("http");
    let rt = common::Runtime::start_in(
        &dir,
        &[],
        &[
            "--endpoint",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--http-file",
            file.to_str().unwrap(),
            "--set",
            "gateway.max_body=2048",
        ],
    );
    let addr = http_addr(&file);

    // A call: the reply is the method's JSON.
    let echo = post(&addr, "/v1/debug/echo", r#"{"x": [1, 2]}"#, &[]);
    assert_eq!(echo.status, 200, "{echo:?}");
    assert_eq!(echo.json(), json!({"x": [1, 2]}));
    assert_eq!(
        echo.header("content-type").as_deref(),
        Some("application/json")
    );
    let ping = curl(&addr, "POST", "/v1/sys/ping", None, &[]);
    assert_eq!(
        ping.status, 200,
        "an empty body is an empty input: {ping:?}"
    );
    // HTTP/2 without TLS (prior knowledge), same answer.
    let h2 = post(&addr, "/v1/debug/echo", "[3]", &["--http2-prior-knowledge"]);
    assert_eq!((h2.status, h2.version.as_str()), (200, "2"), "{h2:?}");
    assert_eq!(h2.json(), json!([3]));

    // Errors: polycall's code as the status, {"code", "message"} as the body.
    let cases: [ErrorCase; 6] = [
        ("POST", "/v1/nothing/here", "{}", &[], 404, "unknown_method"),
        ("POST", "/v1/debug/echo", "{not json", &[], 400, "malformed"),
        (
            "POST",
            "/v1/debug/sleep",
            r#"{"ms": 3000}"#,
            &["-H", "polycall-timeout-ms: 200"],
            504,
            "deadline_exceeded",
        ),
        (
            "POST",
            "/v1/debug/echo",
            "{}",
            &["-H", "polycall-timeout-ms: soon"],
            400,
            "invalid_input",
        ),
        ("POST", "/v1/debug/stream", "{}", &[], 400, "invalid_input"),
        ("POST", "/nowhere", "{}", &[], 404, "not_found"),
    ];
    for (method, path, body, args, status, code) in cases {
        let mut all = vec!["-H", "content-type: application/json"];
        all.extend_from_slice(args);
        let a = curl(&addr, method, path, Some(body), &all);
        assert_eq!(a.status, status, "{method} {path}: {a:?}");
        assert_eq!(a.json()["code"], json!(code), "{method} {path}: {a:?}");
        assert!(!a.json()["message"].as_str().unwrap().is_empty());
    }
    let get = curl(&addr, "GET", "/v1/debug/echo", None, &[]);
    assert_eq!(get.status, 405, "{get:?}");
    assert_eq!(get.header("allow").as_deref(), Some("POST"));
    let text = curl(
        &addr,
        "POST",
        "/v1/debug/echo",
        Some("hello"),
        &["-H", "content-type: text/plain"],
    );
    assert_eq!(text.status, 415, "{text:?}");
    let big = format!("\"{}\"", "x".repeat(4096));
    let large = post(&addr, "/v1/debug/echo", &big, &[]);
    assert_eq!(large.status, 413, "gateway.max_body = 2048: {large:?}");
    assert_eq!(large.json()["code"], json!("too_large"));
    let trace = post(
        &addr,
        "/v1/debug/echo",
        "{}",
        &[
            "-H",
            "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ],
    );
    assert_eq!(trace.status, 200, "{trace:?}");
    let bad_trace = post(
        &addr,
        "/v1/debug/echo",
        "{}",
        &["-H", "traceparent: nonsense"],
    );
    assert_eq!(bad_trace.status, 400, "{bad_trace:?}");

    // The runtime keeps serving native calls beside.
    let out = rt.cli(&["call", "sys.ping"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The OpenAPI document, valid by openapi-spec-validator, and the docs page.
    let doc = curl(&addr, "GET", "/openapi.json", None, &[]);
    assert_eq!(doc.status, 200);
    let spec = doc.json();
    assert_eq!(spec["openapi"], json!("3.1.0"));
    assert!(
        spec["paths"]["/v1/debug/echo"]["post"].is_object(),
        "{spec}"
    );
    assert!(
        spec["paths"]["/v1/debug/stream"]["post"]["responses"]["200"]["content"]
            ["text/event-stream"]
            .is_object(),
        "streams answer Server-Sent Events: {spec}"
    );
    let spec_file = dir.join("openapi.json");
    std::fs::write(&spec_file, &doc.body).unwrap();
    let checked = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&spec_file)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "openapi-spec-validator (PyPI; `cargo xtask ci` installs it) refused the document: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let page = curl(&addr, "GET", "/docs", None, &[]);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("debug.echo") && page.body.contains("/openapi.json"));
    assert!(
        !page.body.contains("<script"),
        "the page is self-contained, no scripts"
    );
    assert_eq!(curl(&addr, "GET", "/healthz", None, &[]).status, 200);
}

#[test]
fn http_callers_pass_the_runtime_authentication_and_policy() {
    let dir = polycall_test_support::TempDir::new("gateway-auth");
    std::fs::write(
        dir.join("auth.toml"),
        r#"
[tokens]
ops = "env:TEST_OPS_TOKEN"
viewer = "env:TEST_VIEWER_TOKEN"

[[rules]]
service = "debug"
method = "echo"
allow = ["token:ops"]

[[rules]]
service = "sys"
method = "ping"
allow = ["authenticated"]
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("polycall.toml"),
        r#"version = 1
[auth]
anonymous = false
file = "auth.toml"
[gateway]
listen = "127.0.0.1:0"
"#,
    )
    .unwrap();
    let (ops, viewer) = (
        "ops-token-0123456789abcdef",
        "viewer-token-0123456789abcdef",
    );
    let file = dir.join("http");
    let config = dir.join("polycall.toml");
    let rt = common::Runtime::start_env(
        &dir,
        &[("TEST_OPS_TOKEN", ops), ("TEST_VIEWER_TOKEN", viewer)],
        &["--config", config.to_str().unwrap()],
        &[
            "--endpoint",
            "127.0.0.1:0",
            "--http-file",
            file.to_str().unwrap(),
        ],
    );
    let addr = http_addr(&file);
    let bearer = |t: &str| format!("authorization: Bearer {t}");

    let anonymous = post(&addr, "/v1/sys/ping", "{}", &[]);
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    assert!(
        anonymous
            .header("www-authenticate")
            .unwrap()
            .starts_with("Bearer")
    );
    let wrong = post(&addr, "/v1/sys/ping", "{}", &["-H", &bearer("not-a-token")]);
    assert_eq!(wrong.status, 401, "{wrong:?}");
    let basic = post(
        &addr,
        "/v1/sys/ping",
        "{}",
        &["-H", "authorization: Basic b3BzOm9wcw=="],
    );
    assert_eq!(basic.status, 401, "{basic:?}");
    let ping = post(&addr, "/v1/sys/ping", "{}", &["-H", &bearer(viewer)]);
    assert_eq!(ping.status, 200, "{ping:?}");
    // The authorization policy, as for native calls.
    let denied = post(&addr, "/v1/debug/echo", "{}", &["-H", &bearer(viewer)]);
    assert_eq!(denied.status, 403, "{denied:?}");
    assert_eq!(denied.json()["code"], json!("permission_denied"));
    let allowed = post(
        &addr,
        "/v1/debug/echo",
        r#"{"ok": true}"#,
        &["-H", &bearer(ops)],
    );
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert_eq!(allowed.json(), json!({"ok": true}));
    drop(rt);
}

const ROUTES: &str = r#"
[versions.v1]
deprecated = 2026-11-01T00:00:00Z
sunset = 2099-01-01T00:00:00Z
link = "https://example.org/api/v2"

[versions.v0]
sunset = 2020-01-01

[keys.partner]
key = "env:TEST_PARTNER_KEY"
quota = 3

[[routes]]
version = "v2"
method = "GET"
path = "/items/{id}"
call = "debug.echo"
input = { item_id = "path.id:int", "filter.verbose" = "query.verbose:bool", tenant = "header.x-tenant" }
defaults = { limit = 10 }
output = { rename = { item_id = "id" }, omit = ["tenant"] }

[[routes]]
version = "v2"
method = "POST"
path = "/items/{id}/notes"
call = "debug.echo"
input = { item_id = "path.id" }
status = { ok = 201 }

[[routes]]
version = "v2"
method = "POST"
path = "/sleep"
call = "debug.sleep"
concurrency = 1
status = { invalid_input = 422 }

[[routes]]
version = "v2"
method = "GET"
path = "/ping"
call = "sys.ping"
rate = 1
burst = 2

[[routes]]
version = "v0"
method = "GET"
path = "/ping"
call = "sys.ping"
"#;

#[test]
fn http_routes_map_paths_onto_calls_under_versions_keys_and_limits() {
    let dir = polycall_test_support::TempDir::new("gateway-routes");
    let routes = dir.join("routes.toml");
    std::fs::write(&routes, ROUTES).unwrap();
    let file = dir.join("http");
    let partner = "partner-key-0123456789";
    let rt = common::Runtime::start_env(
        &dir,
        &[("TEST_PARTNER_KEY", partner)],
        &[],
        &[
            "--endpoint",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--http-file",
            file.to_str().unwrap(),
            "--http-routes",
            routes.to_str().unwrap(),
        ],
    );
    let addr = http_addr(&file);

    // Path, query and header parameters become typed input fields over the defaults;
    // the reply is reshaped.
    let item = curl(
        &addr,
        "GET",
        "/v2/items/42?verbose=true",
        None,
        &["-H", "x-tenant: acme"],
    );
    assert_eq!(item.status, 200, "{item:?}");
    assert_eq!(
        item.json(),
        json!({"id": 42, "filter": {"verbose": true}, "limit": 10})
    );
    assert_eq!(item.header("deprecation"), None, "v2 is current");
    let bad = curl(&addr, "GET", "/v2/items/x1", None, &[]);
    assert_eq!(bad.status, 400, "{bad:?}");
    assert!(
        bad.json()["message"]
            .as_str()
            .unwrap()
            .contains("path parameter `id`")
    );
    let delete = curl(&addr, "DELETE", "/v2/items/42", None, &[]);
    assert_eq!(delete.status, 405, "{delete:?}");
    assert_eq!(delete.header("allow").as_deref(), Some("GET"));
    // A body is the base the path's fields are set on; the route's success status.
    let note = post(&addr, "/v2/items/7/notes", r#"{"text": "hi"}"#, &[]);
    assert_eq!(note.status, 201, "{note:?}");
    assert_eq!(note.json(), json!({"text": "hi", "item_id": "7"}));
    // The route's own status for a code.
    let unprocessable = post(&addr, "/v2/sleep", r#"{"ms": "soon"}"#, &[]);
    assert_eq!(unprocessable.status, 422, "{unprocessable:?}");
    assert_eq!(unprocessable.json()["code"], json!("invalid_input"));

    // Concurrency: one request at a time on /v2/sleep; the second answers 503. (A
    // probe would hold the slot itself, so the test waits for the first to be in.)
    let slow = {
        let addr = addr.clone();
        std::thread::spawn(move || post(&addr, "/v2/sleep", r#"{"ms": 2500}"#, &[]))
    };
    std::thread::sleep(Duration::from_millis(800));
    let busy = post(&addr, "/v2/sleep", r#"{"ms": 1}"#, &[]);
    assert_eq!(busy.status, 503, "{busy:?}");
    assert_eq!(busy.header("retry-after").as_deref(), Some("1"));
    assert_eq!(slow.join().unwrap().status, 200);
    assert_eq!(post(&addr, "/v2/sleep", r#"{"ms": 1}"#, &[]).status, 200);

    // Rate: bursts of 2, then 429 with Retry-After.
    let answers: Vec<Answer> = (0..3)
        .map(|_| curl(&addr, "GET", "/v2/ping", None, &[]))
        .collect();
    assert_eq!(answers[0].status, 200, "{:?}", answers[0]);
    assert_eq!(answers[2].status, 429, "{:?}", answers[2]);
    assert_eq!(answers[2].json()["code"], json!("busy"));
    assert!(answers[2].header("retry-after").is_some());

    // API keys: a wrong key is refused; a key's quota counts its requests.
    let key = format!("x-api-key: {partner}");
    let wrong = post(&addr, "/v1/sys/ping", "{}", &["-H", "x-api-key: guessed"]);
    assert_eq!(wrong.status, 401, "{wrong:?}");
    for _ in 0..3 {
        let a = post(&addr, "/v1/sys/ping", "{}", &["-H", &key]);
        assert_eq!(a.status, 200, "{a:?}");
    }
    let over = post(&addr, "/v1/sys/ping", "{}", &["-H", &key]);
    assert_eq!(over.status, 429, "{over:?}");
    let wait: u64 = over.header("retry-after").unwrap().parse().unwrap();
    assert!(wait > 80_000, "a day's quota: retry after {wait} s");
    assert_eq!(
        post(&addr, "/v1/sys/ping", "{}", &[]).status,
        200,
        "keys are not required: without one, no key limit"
    );

    // Versions: v1 (the methods' own paths) is deprecated, v0 retired.
    let old = post(&addr, "/v1/debug/echo", "{}", &[]);
    assert_eq!(old.status, 200, "{old:?}");
    assert_eq!(old.header("deprecation").as_deref(), Some("@1793491200"));
    assert_eq!(
        old.header("sunset").as_deref(),
        Some("Thu, 01 Jan 2099 00:00:00 GMT")
    );
    assert_eq!(
        old.header("link").as_deref(),
        Some("<https://example.org/api/v2>; rel=\"deprecation\"")
    );
    let gone = curl(&addr, "GET", "/v0/ping", None, &[]);
    assert_eq!(gone.status, 410, "{gone:?}");
    assert!(gone.json()["message"].as_str().unwrap().contains("retired"));

    // The OpenAPI document has the routes, their parameters and versions.
    let doc = curl(&addr, "GET", "/openapi.json", None, &[]);
    let spec = doc.json();
    let get = &spec["paths"]["/v2/items/{id}"]["get"];
    assert_eq!(
        get["parameters"][1],
        json!({"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}),
        "{get}"
    );
    assert_eq!(
        spec["paths"]["/v1/debug/echo"]["post"]["deprecated"],
        json!(true)
    );
    assert!(spec["paths"]["/v2/items/{id}/notes"]["post"]["responses"]["201"].is_object());
    assert!(spec["components"]["securitySchemes"]["apiKey"].is_object());
    let spec_file = dir.join("openapi.json");
    std::fs::write(&spec_file, &doc.body).unwrap();
    let checked = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&spec_file)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "openapi-spec-validator refused the document: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    // describe shows each method's HTTP routes.
    let out = rt.cli(&["--format", "json", "describe"]);
    let described: Value = serde_json::from_slice(&out.stdout).unwrap();
    let echo = described["data"]["methods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "debug.echo")
        .unwrap()
        .clone();
    let paths: Vec<&str> = echo["http"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["/v2/items/{id}", "/v2/items/{id}/notes", "/v1/debug/echo"],
        "{echo}"
    );
    let text = rt.cli(&["describe"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("    POST /v1/debug/echo (deprecated)"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
}

#[test]
fn a_wrong_routes_file_is_refused_by_config_validate_and_at_start() {
    let dir = polycall_test_support::TempDir::new("gateway-routes-bad");
    std::fs::write(
        dir.join("routes.toml"),
        r#"
[keys.partner]
key = "the-key-itself"
[[routes]]
method = "GET"
path = "/items/{id}"
call = "inventory.get"
input = { item = "path.item_id" }
"#,
    )
    .unwrap();
    let config = dir.join("polycall.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\n[gateway]\nlisten = \"127.0.0.1:0\"\nroutes = {:?}\n",
            dir.join("routes.toml")
        ),
    )
    .unwrap();
    let o = common::bin()
        .args(["config", "validate"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("keys.partner.key:"), "{err}");
    assert!(
        err.contains("routes[0] (GET /items/{id}): input.item reads path parameter {item_id}"),
        "{err}"
    );
    let o = common::bin()
        .args([
            "--config",
            config.to_str().unwrap(),
            "run",
            "--endpoint",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("keys.partner.key"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Routes onto the state machines of `tests/fixtures/machines` (for the fuzzing test).
const STATE_ROUTES: &str = r#"
[[routes]]
version = "v2"
method = "GET"
path = "/orders/{id}"
call = "state.order.get"
input = { id = "path.id" }

[[routes]]
version = "v2"
method = "POST"
path = "/orders/{id}/events/{event}"
call = "state.order.fire"
input = { id = "path.id", transition = "path.event", event = "body" }
status = { failed_precondition = 422 }
"#;

#[test]
fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let dir = polycall_test_support::TempDir::new("gateway-fuzz");
    let routes = dir.join("routes.toml");
    std::fs::write(&routes, format!("{ROUTES}\n{STATE_ROUTES}")).unwrap();
    let machines = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/machines");
    let file = dir.join("http");
    let _rt = common::Runtime::start_env(
        &dir,
        &[("TEST_PARTNER_KEY", "partner-key-0123456789")],
        &[],
        &[
            "--endpoint",
            "127.0.0.1:0",
            "--machines",
            machines.to_str().unwrap(),
            "--http",
            "127.0.0.1:0",
            "--http-file",
            file.to_str().unwrap(),
            "--http-routes",
            routes.to_str().unwrap(),
        ],
    );
    let addr = http_addr(&file);
    // Every operation of the document, generated inputs, bounded: a fixed seed keeps
    // the run reproducible; what runs as long as asked is left out (`debug.sleep`, the
    // endless `state.subscribe`, `debug.stream` of any count).
    let out = Command::new("python3")
        // Its cache goes to the scratch directory, not the source tree.
        .current_dir(&dir)
        .args([
            "-c",
            "import sys; from schemathesis.cli import schemathesis; sys.argv[0] = 'schemathesis'; sys.exit(schemathesis())",
            "run",
            &format!("http://{addr}/openapi.json"),
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
            "--exclude-path-regex",
            "sleep|subscribe|debug/stream",
            "--max-examples",
            "15",
            "--seed",
            "20261207",
            "--workers",
            "1",
            "--request-timeout",
            "10",
        ])
        .output()
        .expect("python3 runs schemathesis (PyPI; `cargo xtask ci` installs it)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{report}"
    );
    let tested = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("Tested: "))
        .and_then(|n| n.trim().parse::<u32>().ok())
        .unwrap_or_else(|| panic!("no operation count in the report:\n{report}"));
    assert!(tested >= 35, "{tested} operations tested:\n{report}");
    assert!(report.contains(" passed"), "{report}");
}

/// One Server-Sent Event: its name, id and data.
#[derive(Debug, PartialEq)]
struct Event {
    name: String,
    id: Option<u64>,
    data: Value,
}

fn events(body: &str) -> Vec<Event> {
    body.split("\n\n")
        .filter(|block| !block.trim().is_empty() && !block.starts_with(':'))
        .map(|block| {
            let mut e = Event {
                name: String::new(),
                id: None,
                data: Value::Null,
            };
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    e.name = v.to_string();
                } else if let Some(v) = line.strip_prefix("id: ") {
                    e.id = v.parse().ok();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            e.data = serde_json::from_str(&data).unwrap_or(Value::String(data));
            e
        })
        .collect()
}

fn message(id: u64, data: Value) -> Event {
    Event {
        name: "message".into(),
        id: Some(id),
        data,
    }
}

fn end() -> Event {
    Event {
        name: "end".into(),
        id: None,
        data: json!({"code": "ok"}),
    }
}

#[test]
fn streaming_methods_answer_server_sent_events() {
    let dir = polycall_test_support::TempDir::new("gateway-sse");
    let routes = dir.join("routes.toml");
    std::fs::write(
        &routes,
        r#"
[[routes]]
version = "v2"
method = "GET"
path = "/count/{n}"
call = "debug.stream"
input = { count = "path.n:int" }
output = { rename = { i = "index" } }
"#,
    )
    .unwrap();
    let machines = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/machines");
    let file = dir.join("http");
    let _rt = common::Runtime::start_in(
        &dir,
        &[],
        &[
            "--endpoint",
            "127.0.0.1:0",
            "--machines",
            machines.to_str().unwrap(),
            "--http",
            "127.0.0.1:0",
            "--http-file",
            file.to_str().unwrap(),
            "--http-routes",
            routes.to_str().unwrap(),
        ],
    );
    let addr = http_addr(&file);

    // A server stream: one event per message, numbered, then the end.
    let three = post(&addr, "/v1/debug/stream", r#"{"count": 3}"#, &["-N"]);
    assert_eq!(three.status, 200, "{three:?}");
    assert_eq!(
        three.header("content-type").as_deref(),
        Some("text/event-stream")
    );
    assert_eq!(
        events(&three.body),
        [
            message(0, json!({"i": 0})),
            message(1, json!({"i": 1})),
            message(2, json!({"i": 2})),
            end()
        ]
    );
    // Over HTTP/2 too.
    let h2 = post(
        &addr,
        "/v1/debug/stream",
        r#"{"count": 1}"#,
        &["--http2-prior-knowledge"],
    );
    assert_eq!((h2.status, h2.version.as_str()), (200, "2"), "{h2:?}");
    assert_eq!(events(&h2.body), [message(0, json!({"i": 0})), end()]);
    // A bidirectional stream: the body's array is the request messages.
    let echoed = post(
        &addr,
        "/v1/debug/echo_stream",
        r#"[{"a": 1}, [2], "three"]"#,
        &[],
    );
    assert_eq!(echoed.status, 200, "{echoed:?}");
    assert_eq!(
        events(&echoed.body),
        [
            message(0, json!({"a": 1})),
            message(1, json!([2])),
            message(2, json!("three")),
            end()
        ]
    );
    let not_array = post(&addr, "/v1/debug/echo_stream", r#"{"a": 1}"#, &[]);
    assert_eq!(not_array.status, 400, "{not_array:?}");
    // A route onto a stream: GET (as a browser's EventSource sends), each message
    // reshaped.
    let counted = curl(&addr, "GET", "/v2/count/2", None, &[]);
    assert_eq!(counted.status, 200, "{counted:?}");
    assert_eq!(
        events(&counted.body),
        [
            message(0, json!({"index": 0})),
            message(1, json!({"index": 1})),
            end()
        ]
    );
    // An error at the opening is an HTTP status.
    let bad = post(&addr, "/v1/debug/stream", r#"{"count": "many"}"#, &[]);
    assert_eq!(bad.status, 400, "{bad:?}");
    assert_eq!(bad.json()["code"], json!("invalid_input"));

    // state.subscribe as events: a transition fired over HTTP arrives on the stream.
    let watcher = {
        let addr = addr.clone();
        std::thread::spawn(move || {
            Command::new("curl")
                .args(["-s", "-N", "--max-time", "4", "-X", "POST", "-d", "{}"])
                .args(["-H", "content-type: application/json"])
                .arg(format!("http://{addr}/v1/state/subscribe"))
                .output()
                .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    let created = post(&addr, "/v1/state.counter/create", r#"{"id": "c1"}"#, &[]);
    assert_eq!(created.status, 200, "{created:?}");
    let fired = post(
        &addr,
        "/v1/state.counter/fire",
        r#"{"id": "c1", "transition": "add", "event": {"by": 2}}"#,
        &[],
    );
    assert_eq!(fired.status, 200, "{fired:?}");
    let out = watcher.join().unwrap();
    let seen = events(&String::from_utf8_lossy(&out.stdout));
    assert!(
        seen.iter().any(|e| e.name == "message"
            && e.data["instance"] == json!("c1")
            && e.data["event"]["transition"] == json!("add")),
        "the subscription saw no change of c1: {seen:?}"
    );
}

#[test]
fn a_tls_client_certificate_is_the_http_callers_principal() {
    let dir = polycall_test_support::TempDir::new("gateway-mtls");
    let p = |rel: &str| dir.join(rel).display().to_string();
    common::issue_certs(
        &dir,
        &[
            ("server", "spiffe://polycall.test/runtime/gw"),
            ("app", "spiffe://polycall.test/app/shop"),
            ("other", "spiffe://polycall.test/app/other"),
        ],
    );
    std::fs::write(
        dir.join("auth.toml"),
        r#"
[[rules]]
service = "debug"
method = "echo"
allow = ["spiffe://polycall.test/app/shop"]
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("polycall.toml"),
        format!(
            r#"version = 1
[tls]
enabled = true
cert_file = "{}"
key_file = "{}"
ca_file = "{}"
client_auth = "optional"
[auth]
anonymous = false
certificate = true
file = "{}"
[gateway]
listen = "127.0.0.1:0"
"#,
            p("certs/server.pem"),
            p("certs/server.key"),
            p("ca/ca.pem"),
            p("auth.toml")
        ),
    )
    .unwrap();
    let file = dir.join("http");
    let config = dir.join("polycall.toml");
    let _rt = common::Runtime::start_in(
        &dir,
        &["--config", config.to_str().unwrap()],
        &[
            "--endpoint",
            "127.0.0.1:0",
            "--http-file",
            file.to_str().unwrap(),
        ],
    );
    let addr = http_addr(&file);
    let https = |cert: Option<&str>| {
        let mut c = Command::new("curl");
        c.args([
            "-s",
            "-S",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args([
            "--cacert",
            &p("ca/ca.pem"),
            "-H",
            "content-type: application/json",
        ])
        .args(["-d", "{}"]);
        if let Some(name) = cert {
            c.args(["--cert", &p(&format!("certs/{name}.pem"))])
                .args(["--key", &p(&format!("certs/{name}.key"))]);
        }
        let out = c
            .arg(format!("https://{addr}/v1/debug/echo"))
            .output()
            .unwrap();
        let code = String::from_utf8_lossy(&out.stdout).into_owned();
        if code == "000" {
            // curl could not complete the request: say why.
            return format!("000 ({})", String::from_utf8_lossy(&out.stderr).trim());
        }
        code
    };
    assert_eq!(https(Some("app")), "200", "the rule's identity is served");
    assert_eq!(
        https(Some("other")),
        "403",
        "another identity of the CA is refused by the rule"
    );
    assert_eq!(
        https(None),
        "401",
        "no certificate, no token: unauthenticated"
    );
}
