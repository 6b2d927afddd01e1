//! From `[tls]` and `[auth]` to what a runtime runs with: the TLS server settings, the
//! authenticator (tokens, OPAQUE users, client certificates) and the authorization
//! policy. Secrets are read here, at start (and on reload), from their references;
//! no error message quotes one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use polycall_net::auth::{OpaqueUsers, ServerAuth};
use polycall_security::authz::{Policy, PolicyConfig, RuleConfig};
use polycall_security::hsm::HsmKey;
use polycall_security::opaque::{ServerSetup, UserStore};
use polycall_security::token::Tokens;
use polycall_security::{SecretRef, ServerTls};
use serde::Deserialize;

use super::{ClientAuth, Config};

/// The file `auth.file` names: bearer tokens by name, roles and authorization rules.
///
/// ```toml
/// [tokens]
/// ci = "env:POLYCALL_CI_TOKEN"      # or "file:/run/secrets/ci-token"
///
/// [roles]
/// ops = ["user:alice", "spiffe://example.org/ops/*"]
///
/// [[rules]]
/// service = "sys"
/// method = "ping"
/// allow = ["any"]
///
/// [[rules]]
/// service = "inventory"
/// allow = ["authenticated"]
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    /// Token name → secret reference (`env:NAME` or `file:PATH`, never the token).
    #[serde(default)]
    pub tokens: BTreeMap<String, String>,
    /// Role name → principal patterns.
    #[serde(default)]
    pub roles: BTreeMap<String, Vec<String>>,
    /// Authorization rules; once any exists, what no rule allows is denied.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

impl AuthFile {
    /// Reads and checks the file: its TOML, token references and rules. Errors are
    /// `FILE:LINE:COL: what` when the position is known.
    pub fn read(path: &Path) -> Result<Self, SecurityError> {
        Self::read_checked(path).map_err(SecurityError)
    }

    fn read_checked(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let file: AuthFile = toml::from_str(&text).map_err(|e| match e.span() {
            Some(span) => {
                let (l, c) = line_col(&text, span.start);
                format!("{}:{l}:{c}: {}", path.display(), e.message())
            }
            None => format!("{}: {}", path.display(), e.message()),
        })?;
        for (name, reference) in &file.tokens {
            if !polycall_security::token::valid_name(name) {
                return Err(format!(
                    "{}: token name {name:?}: use letters, digits, '-', '_' or '.'",
                    path.display()
                ));
            }
            let r: SecretRef = reference
                .parse()
                .map_err(|e| format!("{}: token {name}: {e}", path.display()))?;
            if !reference.starts_with("env:") && !reference.starts_with("file:") {
                return Err(format!(
                    "{}: token {name}: write a reference (`env:NAME` or `file:PATH`), never the token itself",
                    path.display()
                ));
            }
            let _ = r;
        }
        Policy::new(&file.policy_config()).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(file)
    }

    /// The roles and rules.
    pub fn policy_config(&self) -> PolicyConfig {
        PolicyConfig::default()
            .roles(self.roles.clone())
            .rules(self.rules.clone())
    }
}

/// Why the security configuration cannot be put in force.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SecurityError(pub String);

/// What the runtime secures itself with.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// The TLS server settings (`None`: plain TCP).
    pub tls: Option<ServerTls>,
    /// How clients authenticate.
    pub auth: ServerAuth,
    /// Who may call what.
    pub policy: Policy,
}

/// Where the OPAQUE server secret lives: beside the users file.
pub fn opaque_setup_path(users_file: &Path) -> PathBuf {
    users_file
        .parent()
        .unwrap_or(Path::new("."))
        .join("opaque-setup")
}

fn file_ref(p: &Path) -> SecretRef {
    SecretRef::File(p.to_owned())
}

impl Security {
    /// Reads every reference `c` names.
    pub fn from_config(c: &Config) -> Result<Self, SecurityError> {
        let t = &c.tls;
        let tls = if t.enabled {
            let hsm_key = match (&t.hsm_module, &t.hsm_token, &t.hsm_key) {
                (Some(module), Some(token), Some(key)) => Some(HsmKey::new(
                    module.clone(),
                    token.clone(),
                    key.clone(),
                    t.hsm_pin_env.clone(),
                )),
                _ => None,
            };
            let mut tls = ServerTls::default()
                .client_auth(match t.client_auth {
                    ClientAuth::Off => polycall_security::ClientAuth::Off,
                    ClientAuth::Optional => polycall_security::ClientAuth::Optional,
                    ClientAuth::Required => polycall_security::ClientAuth::Required,
                })
                .crls(t.crl_file.as_deref().map(file_ref));
            tls.cert_chain = t.cert_file.as_deref().map(file_ref);
            tls.key = t.key_file.as_deref().map(file_ref);
            tls.hsm_key = hsm_key;
            tls.ca = t.ca_file.as_deref().map(file_ref);
            Some(tls)
        } else {
            None
        };
        let mut auth = ServerAuth {
            anonymous: c.auth.anonymous,
            certificate: c.auth.certificate,
            ..ServerAuth::default()
        };
        let mut policy = Policy::default();
        if let Some(f) = &c.auth.file {
            let file = AuthFile::read(f)?;
            let mut tokens = Tokens::default();
            for (name, reference) in &file.tokens {
                let r: SecretRef = reference
                    .parse()
                    .map_err(|e| SecurityError(format!("token {name}: {e}")))?;
                tokens
                    .insert_ref(name, &r)
                    .map_err(|e| SecurityError(format!("token {name}: {e}")))?;
            }
            auth.tokens = tokens;
            policy = Policy::new(&file.policy_config())
                .map_err(|e| SecurityError(format!("{}: {e}", f.display())))?;
        }
        if let Some(users_file) = &c.auth.users_file {
            let setup_path = opaque_setup_path(users_file);
            let setup = ServerSetup::load_or_create(&setup_path)
                .map_err(|e| SecurityError(format!("OPAQUE server secret: {e}")))?;
            let users = UserStore::open(users_file)
                .map_err(|e| SecurityError(format!("OPAQUE users: {e}")))?;
            auth.opaque = Some(Arc::new(OpaqueUsers { setup, users }));
        }
        Ok(Self { tls, auth, policy })
    }

    /// Whether a client must prove who it is (no anonymous sessions, and some method
    /// to prove it with).
    pub fn requires_authentication(&self) -> bool {
        !self.auth.anonymous
            && (!self.auth.tokens.is_empty() || self.auth.opaque.is_some() || self.auth.certificate)
    }

    /// Puts these settings into `rc`.
    pub fn apply(self, rc: &mut crate::RuntimeConfig) {
        rc.server.connection.authenticator = Some(Arc::new(self.auth));
        rc.qos.policy = Some(Arc::new(self.policy));
        rc.tls = self.tls;
    }
}
