//! The security commands as an operator runs them: `certs init/issue`, `users add`, a
//! runtime configured with TLS and authentication, clients proving who they are with
//! a token, a password or a certificate, certificates reloaded on SIGHUP, and the
//! refusal to listen unsecured where others can reach.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const CI_TOKEN: &str = "ci-token-0123456789abcdef";
const PASSWORD: &str = "a distinctive pass phrase 7319";

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_polycall"));
    c.env_remove("POLYCALL_ENDPOINT")
        .env_remove("POLYCALL_CONFIG")
        .env_remove("POLYCALL_PASSWORD")
        .env("POLYCALL_LOG", "warn");
    c
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("polycall-cli-sec-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn ok(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn run_ok(args: &[&str]) -> String {
    ok(&bin().args(args).output().unwrap())
}

struct Runtime(Child);

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(file: &Path) -> String {
    let started = Instant::now();
    loop {
        if let Ok(t) = std::fs::read_to_string(file)
            && t.ends_with('\n')
        {
            return t.trim().to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the runtime did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_operator_secures_a_runtime_with_tls_tokens_passwords_and_certificates() {
    let d = tmp("operator");
    let p = |s: &str| d.join(s).display().to_string();

    // Our own CA, a node certificate and a client certificate with a SPIFFE ID.
    run_ok(&["certs", "init", &p("ca")]);
    assert_eq!(mode(&d.join("ca/ca.key")), 0o600);
    assert_eq!(mode(&d.join("ca")), 0o700);
    let init_again = bin().args(["certs", "init", &p("ca")]).output().unwrap();
    assert_ne!(
        init_again.status.code(),
        Some(0),
        "a CA is never overwritten"
    );
    let out = run_ok(&[
        "--format",
        "json",
        "certs",
        "issue",
        "--ca",
        &p("ca"),
        "--name",
        "node",
        "--loopback",
        "--out",
        &p("node"),
    ]);
    assert!(out.contains("serial"), "{out}");
    assert_eq!(mode(&d.join("node/node.key")), 0o600);
    run_ok(&[
        "certs",
        "issue",
        "--ca",
        &p("ca"),
        "--name",
        "worker",
        "--spiffe",
        "spiffe://test.local/worker",
        "--out",
        &p("worker"),
    ]);

    // A user, with the password on standard input (never argv).
    let mut add = bin()
        .args([
            "users",
            "add",
            "alice",
            "--users-file",
            &p("auth/users.json"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    add.stdin
        .take()
        .unwrap()
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .unwrap();
    ok(&add.wait_with_output().unwrap());
    let users = std::fs::read_to_string(d.join("auth/users.json")).unwrap();
    assert!(users.contains("alice") && !users.contains("distinctive"));
    assert_eq!(mode(&d.join("auth/users.json")), 0o600);
    assert_eq!(mode(&d.join("auth/opaque-setup")), 0o600);

    std::fs::write(
        d.join("auth.toml"),
        r#"
[tokens]
ci = "env:TEST_CI_TOKEN"

[roles]
writers = ["user:alice"]

[[rules]]
service = "sys"
method = "ping"
allow = ["authenticated"]

[[rules]]
service = "debug"
allow = ["role:writers", "spiffe://test.local/*"]
"#,
    )
    .unwrap();
    let config = d.join("polycall.toml");
    std::fs::write(
        &config,
        format!(
            r#"version = 1
[runtime]
endpoint = "127.0.0.1:0"
debug_methods = true
[tls]
enabled = true
cert_file = "{node}/node.pem"
key_file = "{node}/node.key"
ca_file = "{ca}/ca.pem"
client_auth = "optional"
[auth]
anonymous = false
certificate = true
file = "auth.toml"
users_file = "auth/users.json"
"#,
            node = p("node"),
            ca = p("ca"),
        ),
    )
    .unwrap();

    // `config show` names the references, never a secret.
    let shown = ok(&bin()
        .env("TEST_CI_TOKEN", CI_TOKEN)
        .arg("--config")
        .arg(&config)
        .args(["config", "show"])
        .output()
        .unwrap());
    assert!(!shown.contains(CI_TOKEN), "{shown}");

    let ep_file = d.join("endpoint");
    let child = bin()
        .env("TEST_CI_TOKEN", CI_TOKEN)
        .arg("--config")
        .arg(&config)
        .args(["run", "--state-dir", &p("state"), "--endpoint-file"])
        .arg(&ep_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let runtime = Runtime(child);
    let ep = wait_for(&ep_file);
    let ca = p("ca/ca.pem");
    let call = |method: &str, extra: &[&str], env: &[(&str, &str)]| {
        let mut c = bin();
        c.args([
            "--format",
            "json",
            "call",
            method,
            "--endpoint",
            &ep,
            "--ca",
            &ca,
        ])
        .args(extra);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    // A token.
    let o = call(
        "sys.ping",
        &["--token-env", "MY_TOKEN"],
        &[("MY_TOKEN", CI_TOKEN)],
    );
    ok(&o);
    // The token may ping but not use debug.*: permission denied, exit 7.
    let o = call(
        "debug.echo",
        &["--token-env", "MY_TOKEN", "--raw", "x"],
        &[("MY_TOKEN", CI_TOKEN)],
    );
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("permission_denied"),
        "{o:?}"
    );
    // A password: alice is a writer.
    let o = call(
        "debug.echo",
        &["--user", "alice", "--raw", "hi"],
        &[("POLYCALL_PASSWORD", PASSWORD)],
    );
    assert!(ok(&o).contains("hi"));
    let o = call(
        "sys.ping",
        &["--user", "alice"],
        &[("POLYCALL_PASSWORD", "wrong password")],
    );
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("unauthenticated"),
        "{o:?}"
    );
    // A client certificate: its SPIFFE ID matches the rule.
    let o = call(
        "debug.echo",
        &[
            "--cert",
            &p("worker/worker.pem"),
            "--key",
            &p("worker/worker.key"),
            "--raw",
            "w",
        ],
        &[],
    );
    assert!(ok(&o).contains('w'));
    // Nothing: refused.
    let o = call("sys.ping", &[], &[]);
    assert_eq!(o.status.code(), Some(7), "{o:?}");

    // A new node certificate from another CA, picked up on SIGHUP.
    run_ok(&["certs", "init", &p("ca2")]);
    std::fs::remove_file(d.join("node/node.key")).unwrap();
    run_ok(&[
        "certs",
        "issue",
        "--ca",
        &p("ca2"),
        "--name",
        "node",
        "--loopback",
        "--out",
        &p("node"),
    ]);
    let ca2 = p("ca2/ca.pem");
    let with_ca2 = |ca: &str| {
        bin()
            .args([
                "call",
                "sys.ping",
                "--endpoint",
                &ep,
                "--ca",
                ca,
                "--token-env",
                "MY_TOKEN",
            ])
            .env("MY_TOKEN", CI_TOKEN)
            .output()
            .unwrap()
    };
    assert_ne!(with_ca2(&ca2).status.code(), Some(0), "not reloaded yet");
    let hup = Command::new("kill")
        .args(["-HUP", &runtime.0.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let started = Instant::now();
    while with_ca2(&ca2).status.code() != Some(0) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "SIGHUP did not reload"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_ne!(
        with_ca2(&ca).status.code(),
        Some(0),
        "the old certificate is gone"
    );
    drop(runtime);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_runtime_others_can_reach_needs_tls_and_authentication_or_insecure_remote() {
    let d = tmp("exposed");
    let o = bin()
        .args(["run", "--endpoint", "0.0.0.0:0", "--state-dir"])
        .arg(d.join("state"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("TLS and authentication") && err.contains("--insecure-remote"),
        "{err}"
    );
    // With --insecure-remote it starts (and stops on SIGTERM).
    let ep_file = d.join("endpoint");
    let child = bin()
        .args([
            "run",
            "--endpoint",
            "0.0.0.0:0",
            "--insecure-remote",
            "--state-dir",
        ])
        .arg(d.join("state"))
        .arg("--endpoint-file")
        .arg(&ep_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let runtime = Runtime(child);
    wait_for(&ep_file);
    drop(runtime);
    let _ = std::fs::remove_dir_all(&d);
}
