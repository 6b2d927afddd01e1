//! `polycall.toml`: layering with origins, every mistake at once with its position,
//! migration from libpolycall's files and from version 0, and the reload diff.

use std::path::{Path, PathBuf};

use polycall_runtime::config::migrate::{self, Role};
use polycall_runtime::config::{Config, Origin, RuntimeConfigExt, Severity, Value};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("polycall-config-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn line_of(o: &Origin) -> usize {
    match o {
        Origin::File { line, .. } => *line,
        _ => 0,
    }
}

#[test]
fn the_invalid_fixture_reports_every_mistake_with_its_position() {
    let path = fixtures().join("invalid.toml");
    let diags = Config::load(Some(&path), &[], &[]).unwrap_err();
    let errors: Vec<_> = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    for d in &errors {
        assert!(
            matches!(&d.origin, Origin::File { line, column, .. } if *line > 0 && *column > 0),
            "no position: {d}"
        );
    }
    let expect = [
        (
            4,
            "unknown key `endpont` in [runtime]; did you mean `endpoint`?",
        ),
        (5, "`runtime.max_connections` must be an integer"),
        (6, "must not be negative"),
        (
            10,
            "`limits.max_message` (2048) is smaller than `limits.max_frame`",
        ),
        (11, "`limits.max_in_flight` = 0 is below the minimum 1"),
        (
            12,
            "`limits.initial_window` (4096) is smaller than `limits.max_frame`",
        ),
        (
            15,
            "`qos.rate_limit_burst` is set but `qos.rate_limit_per_second` is not",
        ),
        (16, "did you mean `max_concurrency`?"),
        (19, "`log.level` = \"verbose\" is not one of"),
        (20, "`log.format` = \"xml\" is not one of text, json"),
        (23, "`tls.cert_file` is set without `tls.key_file`"),
        (23, "does not exist"),
        (
            24,
            "`tls.client_auth` asks for client certificates but `tls.ca_file` is not set",
        ),
        (26, "unknown section `telemetry`"),
    ];
    for (line, text) in expect {
        assert!(
            errors
                .iter()
                .any(|d| line_of(&d.origin) == line && d.message.contains(text)),
            "missing line {line}: {text}\n{}",
            errors
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert_eq!(errors.len(), expect.len(), "{diags:#?}");
    // The rendering tools and people read.
    let first = errors[0].to_string();
    assert!(
        first.starts_with(&format!("{}:4:1: error: ", path.display())),
        "{first}"
    );
    let col = errors.iter().find(|d| line_of(&d.origin) == 5).unwrap();
    assert!(col.to_string().contains(":5:19: error:"), "{col}");
}

#[test]
fn syntax_errors_have_positions_too() {
    let d = Config::load_str(
        "version = 1\n[runtime\nendpoint = 1\n",
        Path::new("x.toml"),
        &[],
        &[],
    )
    .unwrap_err();
    assert!(
        d.iter().any(|d| d.is_error() && line_of(&d.origin) == 2),
        "{d:#?}"
    );
}

#[test]
fn layering_defaults_file_env_set_with_origins() {
    let dir = temp("layers");
    let path = dir.join("polycall.toml");
    std::fs::write(
        &path,
        "version = 1\n\n[qos]\nmax_concurrency = 64\n\n[runtime]\nmax_connections = 7\n",
    )
    .unwrap();
    let env = vec![
        ("POLYCALL_QOS__MAX_CONCURRENCY".to_string(), "8".to_string()),
        ("POLYCALL_LIMITS__MAX_FRAME".to_string(), "64K".to_string()),
        ("PATH".to_string(), "/usr/bin".to_string()),
        (
            "POLYCALL_ENDPOINT".to_string(),
            "ignored: not a SECTION__KEY".to_string(),
        ),
    ];
    let sets = vec!["qos.max_concurrency=4".to_string()];

    let l = Config::load(Some(&path), &env, &sets).unwrap();
    assert_eq!(l.config.qos.max_concurrency, Some(4));
    assert_eq!(
        l.entry("qos.max_concurrency").unwrap().origin.to_string(),
        "--set qos.max_concurrency=4"
    );
    assert_eq!(l.config.limits.max_frame, 64 * 1024);
    assert_eq!(
        l.entry("limits.max_frame").unwrap().origin.to_string(),
        "env POLYCALL_LIMITS__MAX_FRAME"
    );
    assert_eq!(l.config.runtime.max_connections, 7);
    assert_eq!(
        l.entry("runtime.max_connections")
            .unwrap()
            .origin
            .to_string(),
        format!("{}:7:1", path.display())
    );
    assert_eq!(l.entry("runtime.endpoint").unwrap().origin, Origin::Default);
    assert_eq!(l.config.runtime.endpoint, "127.0.0.1:7464");

    let l = Config::load(Some(&path), &env, &[]).unwrap();
    assert_eq!(l.config.qos.max_concurrency, Some(8));
    assert_eq!(
        l.entry("qos.max_concurrency").unwrap().origin,
        Origin::Env {
            name: "POLYCALL_QOS__MAX_CONCURRENCY".into()
        }
    );
    let l = Config::load(Some(&path), &[], &[]).unwrap();
    assert_eq!(l.config.qos.max_concurrency, Some(64));
    assert_eq!(line_of(&l.entry("qos.max_concurrency").unwrap().origin), 4);
    let l = Config::load(None, &[], &[]).unwrap();
    assert_eq!(l.config.qos.max_concurrency, None);
    assert_eq!(
        l.entry("qos.max_concurrency").unwrap().origin,
        Origin::Default
    );
}

#[test]
fn env_and_set_mistakes_are_reported_with_suggestions() {
    let env = vec![("POLYCALL_QOS__MAX_CONCURENCY".to_string(), "8".to_string())];
    let sets = vec![
        "log.levl=debug".to_string(),
        "limits.max_frame=12".to_string(),
        "nonsense".to_string(),
    ];
    let d = Config::load(None, &env, &sets).unwrap_err();
    let text: Vec<String> = d.iter().map(ToString::to_string).collect();
    assert_eq!(d.len(), 4, "{text:#?}");
    assert!(
        text[0].contains("env POLYCALL_QOS__MAX_CONCURENCY: error:")
            && text[0].contains("POLYCALL_QOS__MAX_CONCURRENCY")
    );
    assert!(text[1].contains("did you mean `log.level`?"));
    assert!(text[2].contains("below the minimum 1024"));
    assert!(text[3].contains("expected `section.key=value`"));
}

#[test]
fn to_runtime_config_carries_every_value() {
    let l = Config::load(Some(&fixtures().join("good.toml")), &[], &[]).unwrap();
    let rc = l.to_runtime_config();
    assert_eq!(rc.endpoint.to_string(), "127.0.0.1:0");
    assert_eq!(rc.server.max_connections, 100);
    assert_eq!(rc.server.drain_timeout.as_millis(), 2000);
    let limits = rc.server.connection.proto.settings.limits;
    assert_eq!(limits.max_frame, 128 * 1024);
    assert_eq!(limits.max_message, 16 * 1024 * 1024);
    assert!(limits.validate().is_ok());
    let rate = rc.qos.rate_limit.unwrap();
    assert_eq!((rate.per_second, rate.burst), (1000, 1000));
    assert_eq!(rc.qos.concurrency.unwrap().max, 64);
    assert_eq!(l.log_level(), "warn");
}

#[test]
fn tls_is_validated_and_flagged() {
    let dir = temp("tls");
    std::fs::write(dir.join("cert.pem"), "x").unwrap();
    std::fs::write(dir.join("key.pem"), "x").unwrap();
    let path = dir.join("polycall.toml");
    std::fs::write(
        &path,
        "version = 1\n[tls]\nenabled = true\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"\n",
    )
    .unwrap();
    let l = Config::load(Some(&path), &[], &[]).unwrap();
    assert!(l.config.tls.enabled);
    assert_eq!(
        l.config.tls.cert_file.as_deref(),
        Some(dir.join("cert.pem").as_path())
    );
    let rc = l.runtime_config().unwrap();
    let tls = rc.tls.expect("TLS settings in the runtime configuration");
    assert_eq!(
        tls.cert_chain.map(|r| r.to_string()),
        Some(format!("file:{}", dir.join("cert.pem").display()))
    );
    std::fs::write(&path, "version = 1\n[tls]\nenabled = true\n").unwrap();
    let d = Config::load(Some(&path), &[], &[]).unwrap_err();
    assert!(d.iter().any(|d| {
        d.message
            .contains("needs `tls.cert_file` and `tls.key_file`")
    }));
}

#[test]
fn a_libpolycall_polycallfile_with_every_documented_key_migrates() {
    let dir = fixtures().join("libpolycall");
    let (files, warnings) = migrate::discover(std::slice::from_ref(&dir)).unwrap();
    assert!(warnings.is_empty(), "{warnings:#?}");
    let roles: Vec<_> = files.iter().map(|f| f.role.clone()).collect();
    assert_eq!(
        roles,
        [Role::Project, Role::Global, Role::Language("python".into())]
    );
    let m = migrate::migrate_libpolycall(&files).unwrap();

    // Later layers win: Polycallrc over Polycallfile, Polycallrc.python over both.
    let to = |k: &str| m.mapped.iter().find(|x| x.to == k).map(|x| x.value.clone());
    assert_eq!(to("log.level"), Some(Value::Str("warn".into())));
    assert_eq!(to("limits.handshake_timeout_ms"), Some(Value::Int(8000)));
    assert_eq!(to("limits.max_message"), Some(Value::Int(32 << 20)));
    assert_eq!(to("runtime.max_connections"), Some(Value::Int(2000)));
    assert_eq!(
        to("runtime.endpoint"),
        Some(Value::Str("127.0.0.1:7464".into()))
    );
    assert_eq!(
        to("runtime.state_dir"),
        Some(Value::Str(".polycall".into()))
    );
    assert_eq!(to("runtime.drain_timeout_ms"), Some(Value::Int(15000)));
    assert_eq!(to("limits.frame_timeout_ms"), Some(Value::Int(20000)));
    assert_eq!(to("limits.write_stall_timeout_ms"), Some(Value::Int(20000)));
    assert_eq!(to("qos.rate_limit_per_second"), Some(Value::Int(100)));
    assert_eq!(to("log.format"), Some(Value::Str("json".into())));
    assert_eq!(to("tls.enabled"), Some(Value::Bool(false)));
    assert_eq!(to("tls.client_auth"), Some(Value::Str("off".into())));
    assert_eq!(
        to("tls.cert_file"),
        Some(Value::Str(
            dir.join("certs/server.pem").display().to_string()
        ))
    );

    // Every line of every file is accounted for: mapped, overridden (a warning) or
    // listed as not migrated with its file:line. Nothing is dropped silently.
    for f in &files {
        let text = std::fs::read_to_string(&f.path).unwrap();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap().trim();
            if line.is_empty() {
                continue;
            }
            let at = |o: &Origin| matches!(o, Origin::File { path, line: l, .. } if *path == f.path && *l == i + 1);
            let ok = m.mapped.iter().any(|x| at(&x.origin))
                || m.unmapped.iter().any(|x| at(&x.origin))
                || m.warnings
                    .iter()
                    .any(|x| at(&x.origin) && x.message.contains("overridden"));
            assert!(
                ok,
                "{}:{}: `{line}` is not accounted for",
                f.path.display(),
                i + 1
            );
        }
    }
    for key in [
        "server",
        "network",
        "peer",
        "log_directory",
        "workspace_root",
        "auto_discover",
        "discovery_interval",
        "min_tls_version",
        "max_memory_per_service",
        "max_cpu_per_service",
        "enable_metrics",
        "metrics_port",
        "daemon_log_file",
        "auth_token_env",
        "peer_node_id",
        "peer_endpoint",
        "peer_inbox_capacity",
        "max_memory",
        "timeout",
        "allow_remote",
        "require_auth",
        "retry_interval",
        "reconnect_attempts",
        "heartbeat_interval",
        "health_check_interval",
        "circuit_breaker_enabled",
        "failure_threshold",
        "circuit_reset_timeout",
        "auth_required",
        "auth_method",
        "token_expiry",
        "port",
        "server_type",
        "workspace",
    ] {
        let u = m
            .unmapped
            .iter()
            .find(|u| u.key == key)
            .unwrap_or_else(|| panic!("{key} not reported"));
        assert!(line_of(&u.origin) > 0 && !u.reason.is_empty());
        assert!(
            m.toml.contains(&format!(
                "{}:{}: {key}",
                u.origin_file(),
                line_of(&u.origin)
            )),
            "{key} not in the file's list"
        );
    }

    // The written file names its sources and loads (except the TLS files, absent here).
    assert!(
        m.toml
            .starts_with("# polycall.toml, written by `polycall config migrate`")
    );
    assert!(m.toml.contains("Polycallrc.python"));
    let d = Config::load_str(&m.toml, Path::new("polycall.toml"), &[], &[]).unwrap_err();
    assert!(
        d.iter()
            .filter(|d| d.is_error())
            .all(|d| d.message.contains("does not exist")),
        "{d:#?}"
    );
    let without_tls: String = m
        .toml
        .lines()
        .filter(|l| !l.contains("_file ="))
        .collect::<Vec<_>>()
        .join("\n");
    let l = Config::load_str(&without_tls, Path::new("polycall.toml"), &[], &[]).unwrap();
    assert_eq!(l.config.runtime.max_connections, 2000);
}

trait OriginFile {
    fn origin_file(&self) -> String;
}

impl OriginFile for migrate::Unmapped {
    fn origin_file(&self) -> String {
        match &self.origin {
            Origin::File { path, .. } => path.file_name().unwrap().to_string_lossy().into_owned(),
            _ => String::new(),
        }
    }
}

#[test]
fn the_legacy_polycallrc_is_read_with_a_warning_and_unknown_keys_are_listed() {
    let (files, warnings) = migrate::discover(&[fixtures().join("legacy")]).unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].role, Role::Legacy);
    assert!(
        warnings
            .iter()
            .any(|w| w.message.contains("legacy fallback"))
    );
    let m = migrate::migrate_libpolycall(&files).unwrap();
    assert!(
        m.mapped
            .iter()
            .any(|x| x.to == "log.level" && x.value == Value::Str("debug".into()))
    );
    assert!(
        m.unmapped
            .iter()
            .any(|u| u.key == "colour_output" && line_of(&u.origin) == 4)
    );
    assert!(m.warnings.iter().any(|w| {
        w.message
            .contains("unknown libpolycall key `colour_output`")
    }));
}

#[test]
fn libpolycall_mistakes_are_all_reported() {
    let dir = temp("badlib");
    std::fs::write(
        dir.join("Polycallfile"),
        "server python 8084:3001\nserver python 8085:3002\npeer a h:1\npeer a h:2\nserver node 0:70000\n\
         tls_enabled=yes\nenable_metrics=True\nmetrics_port=70000\ntls_enabled=true\nnetwork go\njust words\n",
    )
    .unwrap();
    std::fs::write(dir.join("Polycallrc.node"), "server_type=python\n").unwrap();
    let (files, _) = migrate::discover(&[dir]).unwrap();
    let d = migrate::migrate_libpolycall(&files).unwrap_err();
    let errs: Vec<(usize, String)> = d
        .iter()
        .filter(|d| d.is_error())
        .map(|d| (line_of(&d.origin), d.message.clone()))
        .collect();
    for (line, text) in [
        (2, "duplicate server language `python`"),
        (4, "duplicate peer id `a`"),
        (5, "ports from 1 to 65535"),
        (6, "exactly `true` or `false`"),
        (7, "exactly `true` or `false`"),
        (8, "not a port from 1 to 65535"),
        (9, "`tls_enabled=true` requires `cert_file`"),
        (9, "`tls_enabled=true` requires `key_file`"),
        (10, "`network start` or `network stop`"),
        (11, "neither `key=value`"),
        (1, "does not match the file's language `node`"),
    ] {
        assert!(
            errs.iter().any(|(l, m)| *l == line && m.contains(text)),
            "missing {line}: {text} in {errs:#?}"
        );
    }
}

#[test]
fn version_0_migrates_to_version_1() {
    let path = fixtures().join("polycall.v0.toml");
    // Loading it tells what to do.
    let d = Config::load(Some(&path), &[], &[]).unwrap_err();
    assert!(d[0].message.contains("polycall config migrate"), "{d:#?}");
    let text = std::fs::read_to_string(&path).unwrap();
    let m = migrate::migrate_toml(&text, &path).unwrap();
    assert_eq!((m.from, m.to), (0, 1));
    assert!(
        m.notes
            .iter()
            .any(|n| n == "server.listen → runtime.endpoint")
    );
    assert!(m.toml.starts_with("# Migrated from version 0 to 1"));
    let l = Config::load_str(&m.toml, Path::new("polycall.toml"), &[], &[]).unwrap();
    assert_eq!(l.config.runtime.endpoint, "127.0.0.1:7500");
    assert_eq!(l.config.runtime.state_dir, PathBuf::from(".polycall-v0"));
    assert_eq!(l.config.runtime.max_connections, 500);
    assert_eq!(l.config.runtime.drain_timeout_ms, 3000);
    assert_eq!(l.config.limits.max_frame, 512 * 1024);
    assert_eq!(l.config.log.level, "debug");
    // Already current: unchanged values, no steps.
    let again = migrate::migrate_toml(&m.toml, &path).unwrap();
    assert_eq!((again.from, again.notes.len()), (1, 0));
    assert_eq!(
        migrate::STEPS.len() as u64,
        polycall_runtime::config::CURRENT_VERSION
    );
}

#[test]
fn diff_splits_reloadable_from_restart_required() {
    let a = Config::load(None, &[], &[]).unwrap();
    let b = Config::load(
        None,
        &[],
        &[
            "qos.max_concurrency=10".into(),
            "log.level=debug".into(),
            "limits.max_frame=2048".into(),
            "runtime.endpoint=127.0.0.1:9999".into(),
        ],
    )
    .unwrap();
    let d = a.diff(&b);
    let keys = |v: &[polycall_runtime::config::KeyChange]| {
        v.iter().map(|c| c.key.clone()).collect::<Vec<_>>()
    };
    // Limits reload too (for connections opened afterwards); the endpoint does not.
    assert_eq!(
        keys(&d.reloadable),
        ["limits.max_frame", "qos.max_concurrency", "log.level"]
    );
    assert_eq!(keys(&d.restart_required), ["runtime.endpoint"]);
    let concurrency = d
        .reloadable
        .iter()
        .find(|c| c.key == "qos.max_concurrency")
        .unwrap();
    assert_eq!(concurrency.old, None);
    assert_eq!(concurrency.new, Some(Value::Int(10)));
    assert!(a.diff(&a).is_empty());
}

#[test]
fn validate_says_why_a_secured_runtime_serves_no_legacy_dialect() {
    let warned = |text: &str| -> Vec<String> {
        let l = Config::load_str(text, Path::new("polycall.toml"), &[], &[]).unwrap();
        l.warnings.iter().map(ToString::to_string).collect()
    };
    let secured = warned("version = 1\n[auth]\nanonymous = false\n");
    assert!(
        secured
            .iter()
            .any(|w| w.contains("compat.when_secured") && w.contains("auth.anonymous = false")),
        "{secured:#?}"
    );
    let exposed = warned("version = 1\n[runtime]\nendpoint = \"0.0.0.0:7464\"\n");
    assert!(
        exposed.iter().any(|w| w.contains("not loopback")),
        "{exposed:#?}"
    );
    // The explicit choice, either way, silences it; a loopback development runtime too.
    for quiet in [
        "version = 1\n[auth]\nanonymous = false\n[compat]\nwhen_secured = true\n",
        "version = 1\n[auth]\nanonymous = false\n[compat]\npcr1 = false\nlegacy_v1 = false\n",
        "version = 1\n",
    ] {
        let w = warned(quiet);
        assert!(
            !w.iter().any(|w| w.contains("when_secured")),
            "{quiet}: {w:#?}"
        );
    }
}

#[test]
fn cluster_settings_are_validated_and_carried() {
    let sets = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // Good: both keys, parsed into the runtime's settings.
    let l = Config::load(
        None,
        &[],
        &sets(&[
            "cluster.node_id=2",
            "cluster.members=1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103",
            "cluster.snapshot_every=50",
        ]),
    )
    .unwrap();
    let c = l.to_runtime_config().cluster.unwrap();
    assert_eq!((c.node_id, c.members.len(), c.snapshot_every), (2, 3, 50));
    assert_eq!(c.members[&3], "127.0.0.1:7103");
    // Bad: a node id without members, members listing a node twice or with no port,
    // an election timeout shorter than three heartbeats.
    for (bad, expect) in [
        (
            vec!["cluster.node_id=1"],
            "needs both `cluster.node_id` and `cluster.members`",
        ),
        (
            vec!["cluster.node_id=1", "cluster.members=1=a:1,1=b:2"],
            "node 1 is listed twice",
        ),
        (
            vec!["cluster.node_id=1", "cluster.members=1=localhost"],
            "the address is HOST:PORT",
        ),
        (
            vec![
                "cluster.heartbeat_ms=200",
                "cluster.election_timeout_ms=300",
            ],
            "at least three heartbeats",
        ),
    ] {
        let d = Config::load(None, &[], &sets(&bad)).unwrap_err();
        let text: Vec<String> = d.iter().map(ToString::to_string).collect();
        assert!(
            text.iter().any(|t| t.contains(expect)),
            "{bad:?}: expected {expect:?} in {text:#?}"
        );
    }
}
