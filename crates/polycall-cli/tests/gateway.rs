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
        ("POST", "/v1/debug/stream", "{}", &[], 501, "unsupported"),
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
        spec["paths"].get("/v1/debug/stream").is_none(),
        "streams are left out"
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
