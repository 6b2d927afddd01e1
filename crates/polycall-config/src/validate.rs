//! Checks that span several keys.

use super::{ClientAuth, Config, Diagnostic, Entry, KeyDef, Origin};

fn origin(values: &[(&'static KeyDef, Entry)], key: &str) -> Origin {
    values
        .iter()
        .find(|(d, _)| d.path() == key)
        .map_or(Origin::Default, |(_, e)| e.origin.clone())
}

/// The origin of the first key that is not a default (the one the user wrote).
fn blame(values: &[(&'static KeyDef, Entry)], keys: &[&str]) -> Origin {
    keys.iter()
        .map(|k| origin(values, k))
        .find(|o| *o != Origin::Default)
        .unwrap_or(Origin::Default)
}

/// A diagnostic and the keys it depends on (skipped when one of them had a mistake of
/// its own).
struct Found(Vec<(Vec<&'static str>, Diagnostic)>);

impl Found {
    fn push_on(&mut self, keys: &[&'static str], d: Diagnostic) {
        self.0.push((keys.to_vec(), d));
    }
}

pub(crate) fn cross_check(
    c: &Config,
    values: &[(&'static KeyDef, Entry)],
) -> Vec<(Vec<&'static str>, Diagnostic)> {
    let mut d = Found(Vec::new());
    let l = &c.limits;
    if l.max_frame > l.max_message {
        d.push_on(&["limits.max_message", "limits.max_frame"], Diagnostic::error(
            blame(values, &["limits.max_message", "limits.max_frame"]),
            format!(
                "`limits.max_message` ({}) is smaller than `limits.max_frame` ({}): a message must hold at least one frame",
                l.max_message, l.max_frame
            ),
        ));
    }
    if l.initial_window < l.max_frame {
        d.push_on(&["limits.initial_window", "limits.max_frame"], Diagnostic::error(
            blame(values, &["limits.initial_window", "limits.max_frame"]),
            format!(
                "`limits.initial_window` ({}) is smaller than `limits.max_frame` ({}): the window must hold at least one frame",
                l.initial_window, l.max_frame
            ),
        ));
    }
    if c.qos.rate_limit_burst.is_some() && c.qos.rate_limit_per_second.is_none() {
        d.push_on(&["qos.rate_limit_burst", "qos.rate_limit_per_second"], Diagnostic::error(
            origin(values, "qos.rate_limit_burst"),
            "`qos.rate_limit_burst` is set but `qos.rate_limit_per_second` is not: set the rate too",
        ));
    }
    if let Some(n) = c.qos.max_concurrency
        && n > c
            .runtime
            .max_connections
            .saturating_mul(c.limits.max_concurrent_handlers)
    {
        d.push_on(&["qos.max_concurrency", "runtime.max_connections", "limits.max_concurrent_handlers"], Diagnostic::warning(
            origin(values, "qos.max_concurrency"),
            format!(
                "`qos.max_concurrency` ({n}) can never be reached: max_connections × max_concurrent_handlers is {}",
                c.runtime.max_connections.saturating_mul(c.limits.max_concurrent_handlers)
            ),
        ));
    }
    if let Some(listen) = &c.admin.listen
        && listen.parse::<std::net::SocketAddr>().is_err()
    {
        d.push_on(&["admin.listen"], Diagnostic::error(
            origin(values, "admin.listen"),
            format!("`admin.listen` = {listen:?} must be an IP address and port (127.0.0.1:9464): the admin pages are served over TCP"),
        ));
    }
    if let Some(listen) = &c.gateway.listen
        && listen.parse::<std::net::SocketAddr>().is_err()
    {
        d.push_on(&["gateway.listen"], Diagnostic::error(
            origin(values, "gateway.listen"),
            format!("`gateway.listen` = {listen:?} must be an IP address and port (127.0.0.1:8080): the gateway serves HTTP over TCP"),
        ));
    }
    let cl = &c.cluster;
    match (cl.node_id, &cl.members) {
        (None, None) => {}
        (Some(_), None) | (None, Some(_)) => d.push_on(
            &["cluster.node_id", "cluster.members"],
            Diagnostic::error(
                blame(values, &["cluster.node_id", "cluster.members"]),
                "a cluster needs both `cluster.node_id` and `cluster.members`",
            ),
        ),
        (Some(_), Some(members)) => {
            if let Err(e) = crate::cluster_members(members) {
                d.push_on(
                    &["cluster.members"],
                    Diagnostic::error(
                        origin(values, "cluster.members"),
                        format!("`cluster.members`: {e}"),
                    ),
                );
            }
        }
    }
    if cl.election_timeout_ms < cl.heartbeat_ms.saturating_mul(3) {
        d.push_on(
            &["cluster.election_timeout_ms", "cluster.heartbeat_ms"],
            Diagnostic::error(
                blame(values, &["cluster.election_timeout_ms", "cluster.heartbeat_ms"]),
                format!(
                    "`cluster.election_timeout_ms` ({}) must be at least three heartbeats ({} ms each), or followers stand for election while the leader is fine",
                    cl.election_timeout_ms, cl.heartbeat_ms
                ),
            ),
        );
    }
    // TLS: pairs complete, files present, client authentication has a CA.
    let t = &c.tls;
    let hsm = t.hsm_module.is_some() || t.hsm_token.is_some() || t.hsm_key.is_some();
    if hsm && !(t.hsm_module.is_some() && t.hsm_token.is_some() && t.hsm_key.is_some()) {
        d.push_on(
            &["tls.hsm_module", "tls.hsm_token", "tls.hsm_key"],
            Diagnostic::error(
                blame(values, &["tls.hsm_module", "tls.hsm_token", "tls.hsm_key"]),
                "an HSM-held key needs all of `tls.hsm_module`, `tls.hsm_token` and `tls.hsm_key`",
            ),
        );
    }
    if hsm && t.key_file.is_some() {
        d.push_on(
            &["tls.key_file", "tls.hsm_key"],
            Diagnostic::error(
                blame(values, &["tls.hsm_key", "tls.key_file"]),
                "`tls.key_file` and `tls.hsm_key` both name the private key: keep one",
            ),
        );
    }
    let has_key = t.key_file.is_some() || hsm;
    match (&t.cert_file, has_key) {
        (Some(_), false) => d.push_on(&["tls.cert_file", "tls.key_file"], Diagnostic::error(
            origin(values, "tls.cert_file"),
            "`tls.cert_file` is set without `tls.key_file` (or `tls.hsm_key`): a certificate needs its private key",
        )),
        (None, true) => d.push_on(&["tls.cert_file", "tls.key_file"], Diagnostic::error(
            blame(values, &["tls.key_file", "tls.hsm_key"]),
            "a private key is set without `tls.cert_file`: a private key needs its certificate",
        )),
        (None, false) if t.enabled => d.push_on(&["tls.enabled", "tls.cert_file", "tls.key_file"], Diagnostic::error(
            origin(values, "tls.enabled"),
            "`tls.enabled = true` needs `tls.cert_file` and `tls.key_file` (or an HSM-held key); \
             `polycall certs init` and `polycall certs issue` make them",
        )),
        _ => {}
    }
    for (key, file) in [
        ("tls.cert_file", &t.cert_file),
        ("tls.key_file", &t.key_file),
        ("tls.ca_file", &t.ca_file),
        ("tls.crl_file", &t.crl_file),
        ("tls.hsm_module", &t.hsm_module),
        ("auth.file", &c.auth.file),
    ] {
        if let Some(f) = file
            && !f.is_file()
        {
            d.push_on(
                &[key],
                Diagnostic::error(
                    origin(values, key),
                    format!("`{key}`: {} does not exist or is not a file", f.display()),
                ),
            );
        }
    }
    if t.client_auth != ClientAuth::Off && t.ca_file.is_none() {
        d.push_on(
            &["tls.client_auth", "tls.ca_file"],
            Diagnostic::error(
                origin(values, "tls.client_auth"),
                "`tls.client_auth` asks for client certificates but `tls.ca_file` is not set",
            ),
        );
    }
    if t.crl_file.is_some() && t.client_auth == ClientAuth::Off {
        d.push_on(
            &["tls.crl_file", "tls.client_auth"],
            Diagnostic::error(
                origin(values, "tls.crl_file"),
                "`tls.crl_file` revokes client certificates, but `tls.client_auth` is off",
            ),
        );
    }
    if c.auth.certificate && (!t.enabled || t.client_auth == ClientAuth::Off) {
        d.push_on(&["auth.certificate", "tls.enabled", "tls.client_auth"], Diagnostic::error(
            origin(values, "auth.certificate"),
            "`auth.certificate = true` needs `tls.enabled = true` and `tls.client_auth` optional or required",
        ));
    }
    if let Some(f) = &c.auth.file
        && f.is_file()
        && let Err(e) = crate::auth_file::AuthFile::read(f)
    {
        d.push_on(
            &["auth.file"],
            Diagnostic::error(origin(values, "auth.file"), e.to_string()),
        );
    }
    if let Some(r) = &c.discovery.registry
        && let Err(e) = crate::DiscoveryRegistry::parse(r)
    {
        d.push_on(
            &["discovery.registry"],
            Diagnostic::error(origin(values, "discovery.registry"), e.to_string()),
        );
    }
    if let Some(f) = &c.gateway.routes {
        let checked = polycall_gateway::RouteFile::read(f)
            .and_then(|file| polycall_gateway::Routes::check(&file));
        if let Err(e) = checked {
            d.push_on(
                &["gateway.routes"],
                Diagnostic::error(origin(values, "gateway.routes"), e.to_string()),
            );
        }
        if c.gateway.listen.is_none() {
            d.push_on(&["gateway.routes"], Diagnostic::warning(
                origin(values, "gateway.routes"),
                "`gateway.routes` is set but `gateway.listen` is not: no gateway serves the routes",
            ));
        }
    }
    // The legacy dialects on a secured runtime: an explicit choice.
    let loopback = c
        .runtime
        .endpoint
        .parse::<polycall_core::Endpoint>()
        .is_ok_and(|e| e.is_loopback());
    let requires_auth = !c.auth.anonymous;
    if (c.compat.pcr1 || c.compat.legacy_v1)
        && !c.compat.when_secured
        && (requires_auth || !loopback)
    {
        let why = match (requires_auth, loopback) {
            (true, false) => "`auth.anonymous = false` and `runtime.endpoint` is not loopback",
            (true, true) => "`auth.anonymous = false`",
            _ => "`runtime.endpoint` is not loopback",
        };
        d.push_on(
            &["compat.pcr1", "compat.legacy_v1", "compat.when_secured"],
            Diagnostic::warning(
                blame(values, &["compat.pcr1", "compat.legacy_v1", "auth.anonymous", "runtime.endpoint"]),
                format!(
                    "libpolycall's dialects (compat.pcr1, compat.legacy_v1) will not be served: {why}, and a \
                     secured runtime serves them only with `compat.when_secured = true` (PCR1 clients must \
                     then send an auth_token, first-generation clients log in with [auth] credentials); \
                     set it, or set compat.pcr1 and compat.legacy_v1 to false to silence this"
                ),
            ),
        );
    }
    // The state directory must not be the socket itself.
    if let Some(sock) = c.runtime.endpoint.strip_prefix("unix:")
        && std::path::Path::new(sock.trim_start_matches("//")) == c.runtime.state_dir
    {
        d.push_on(
            &["runtime.endpoint", "runtime.state_dir"],
            Diagnostic::error(
                blame(values, &["runtime.endpoint", "runtime.state_dir"]),
                "`runtime.endpoint` and `runtime.state_dir` name the same path",
            ),
        );
    }
    d.0
}
