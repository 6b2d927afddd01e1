//! Authorization: which principals may call which methods.
//!
//! A [`Policy`] is a list of rules, each naming services and methods (globs with `*`)
//! and what is allowed to call them. With no rule at all every call is allowed (a
//! loopback development runtime); **once any rule exists, a call no rule allows is
//! denied** (`permission_denied`).
//!
//! What a rule allows, from least to most specific:
//!
//! | grant | who |
//! |---|---|
//! | `any` | every session, authenticated or not |
//! | `authenticated` | every authenticated session |
//! | `role:NAME` | principals listed in role `NAME` |
//! | a principal pattern | `user:alice`, `token:ci`, `spiffe://example.org/ns/*`, `dns:*.example.org` |
//!
//! Patterns are typed: the kind (`token:`, `user:`, `spiffe://`, `dns:`) must match the
//! caller's [`Principal`] kind, then the glob is matched against its name alone.
//!
//! Permissions are additive by session state, as libpolycall's hierarchical model
//! meant: an unauthenticated session has what `any` grants; an authenticated one has
//! that, plus what `authenticated` grants, plus what its roles and its own principal
//! are granted.
//!
//! ```
//! use polycall_core::Principal;
//! use polycall_security::authz::{Policy, PolicyConfig};
//! let config: PolicyConfig = serde_json::from_str(r#"{
//!     "roles": { "ops": ["user:alice", "spiffe://example.org/ops/*"] },
//!     "rules": [
//!         { "service": "sys", "method": "ping", "allow": ["any"] },
//!         { "service": "inventory", "allow": ["authenticated"] },
//!         { "service": "admin", "method": "*", "allow": ["role:ops"] }
//!     ]
//! }"#).unwrap();
//! let policy = Policy::new(&config).unwrap();
//! let alice = Principal::user("alice");
//! let bob = Principal::user("bob");
//! let anon = Principal::anonymous("127.0.0.1:4000".parse::<std::net::SocketAddr>().map(polycall_core::PeerAddr::Ip).unwrap());
//! assert!(policy.check(Some(&anon), "sys", "ping").is_ok());
//! assert!(policy.check(Some(&anon), "inventory", "get").is_err());
//! assert!(policy.check(Some(&bob), "inventory", "get").is_ok());
//! assert!(policy.check(Some(&bob), "admin", "drop").is_err());
//! assert!(policy.check(Some(&alice), "admin", "drop").is_ok());
//! ```

use std::collections::BTreeMap;

use polycall_core::Principal;
use serde::{Deserialize, Serialize};

use crate::Error;

/// A policy as written in configuration (`[auth.roles]`, `[[auth.rules]]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PolicyConfig {
    /// Role name → principal patterns in the role.
    #[serde(default)]
    pub roles: BTreeMap<String, Vec<String>>,
    /// The rules; any one allowing a call is enough.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

impl PolicyConfig {
    /// Sets the roles: role name → principal patterns in the role.
    pub fn roles(mut self, roles: BTreeMap<String, Vec<String>>) -> Self {
        self.roles = roles;
        self
    }

    /// Sets the rules; any one allowing a call is enough.
    pub fn rules(mut self, rules: impl IntoIterator<Item = RuleConfig>) -> Self {
        self.rules = rules.into_iter().collect();
        self
    }
}

/// One rule as written in configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RuleConfig {
    /// Service glob (`*` matches any run of characters).
    pub service: String,
    /// Method glob; every method when absent.
    #[serde(default = "star")]
    pub method: String,
    /// Who may call: `any`, `authenticated`, `role:NAME` or principal patterns.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Who may provide (register) these methods on a runtime, in the same grants.
    /// Once rules exist, a method no rule lets a principal provide cannot be
    /// registered by it — no one can slip in as the provider of another's method.
    #[serde(default)]
    pub provide: Vec<String>,
}

impl RuleConfig {
    /// A rule for the services `service` matches (a glob), every method, allowing no one
    /// to call or provide them until [`allow`](Self::allow()) or
    /// [`provide`](Self::provide()) say who.
    ///
    /// ```
    /// use polycall_security::authz::{PolicyConfig, RuleConfig};
    /// let config = PolicyConfig::default().rules([
    ///     RuleConfig::new("sys").method("ping").allow(["any"]),
    ///     RuleConfig::new("inventory").allow(["authenticated"]),
    /// ]);
    /// assert_eq!(config.rules[1].method, "*");
    /// ```
    pub fn new(service: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            method: star(),
            allow: Vec::new(),
            provide: Vec::new(),
        }
    }

    /// Sets the service glob (`*` matches any run of characters).
    pub fn service(mut self, service: impl Into<String>) -> Self {
        self.service = service.into();
        self
    }

    /// Sets the method glob (every method when not set).
    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.method = method.into();
        self
    }

    /// Sets who may call: `any`, `authenticated`, `role:NAME` or principal patterns.
    pub fn allow(mut self, allow: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.allow = allow.into_iter().map(Into::into).collect();
        self
    }

    /// Sets who may provide (register) these methods on a runtime, in the same grants.
    pub fn provide(mut self, provide: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.provide = provide.into_iter().map(Into::into).collect();
        self
    }
}

fn star() -> String {
    "*".into()
}

/// A glob where `*` matches any run of characters (including none).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Glob(String);

impl Glob {
    fn matches(&self, text: &str) -> bool {
        let parts: Vec<&str> = self.0.split('*').collect();
        if parts.len() == 1 {
            return self.0 == text;
        }
        let (first, last) = (parts[0], parts[parts.len() - 1]);
        if !text.starts_with(first) || text.len() < first.len() + last.len() {
            return false;
        }
        let mut rest = &text[first.len()..text.len() - last.len()];
        if !text.ends_with(last) {
            return false;
        }
        for mid in &parts[1..parts.len() - 1] {
            match rest.find(mid) {
                Some(i) => rest = &rest[i + mid.len()..],
                None => return false,
            }
        }
        true
    }
}

/// A principal pattern, typed: the kind of principal, then a glob over its name.
/// `user:ali*` matches users whose name starts with `ali`, never a token of that name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PrincipalPattern {
    Token(Glob),
    User(Glob),
    Spiffe(Glob),
    Dns(Glob),
}

impl PrincipalPattern {
    fn parse(what: &str, text: &str) -> Result<Self, Error> {
        let kinded = |prefix: &str| text.strip_prefix(prefix).map(|rest| check_glob(what, rest));
        if let Some(g) = kinded("token:") {
            return g.map(Self::Token);
        }
        if let Some(g) = kinded("user:") {
            return g.map(Self::User);
        }
        if let Some(g) = kinded("dns:") {
            return g.map(Self::Dns);
        }
        if text.starts_with("spiffe://") {
            return check_glob(what, text).map(Self::Spiffe);
        }
        Err(Error::Config(format!(
            "authorization: {what} {text:?} names no kind of principal; write token:NAME, \
             user:NAME, spiffe://DOMAIN/PATH or dns:NAME (globs with `*`)"
        )))
    }

    fn matches(&self, p: &Principal) -> bool {
        match (self, p) {
            (Self::Token(g), Principal::Token(n))
            | (Self::User(g), Principal::User(n))
            | (Self::Spiffe(g), Principal::Spiffe(n))
            | (Self::Dns(g), Principal::Dns(n)) => g.matches(n),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Grant {
    Any,
    Authenticated,
    Role(String),
    Principal(PrincipalPattern),
}

#[derive(Debug, Clone)]
struct Rule {
    service: Glob,
    method: Glob,
    allow: Vec<Grant>,
    provide: Vec<Grant>,
}

/// A compiled policy. Cheap to check: a linear scan of the rules (policies are short).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    roles: BTreeMap<String, Vec<PrincipalPattern>>,
    rules: Vec<Rule>,
}

/// A call the policy does not allow: the status message, naming who and what, and
/// how to allow it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{who} may not {action} {service}.{method}: no [[rules]] entry of the auth file allows it \
     (rules exist, so everything else is denied)"
)]
pub struct Denied {
    /// What was refused: `call` or `provide`.
    pub action: &'static str,
    /// The caller (`anonymous` when unauthenticated).
    pub who: String,
    /// The service called.
    pub service: String,
    /// The method called.
    pub method: String,
}

fn check_glob(what: &str, g: &str) -> Result<Glob, Error> {
    if g.is_empty() {
        return Err(Error::Config(format!(
            "authorization: empty {what} pattern"
        )));
    }
    Ok(Glob(g.to_owned()))
}

impl Policy {
    /// Compiles `config`, refusing unknown roles, empty patterns and rules that allow
    /// nobody.
    pub fn new(config: &PolicyConfig) -> Result<Self, Error> {
        let mut roles = BTreeMap::new();
        for (name, members) in &config.roles {
            let globs = members
                .iter()
                .map(|m| PrincipalPattern::parse(&format!("role {name} member"), m))
                .collect::<Result<Vec<_>, _>>()?;
            roles.insert(name.clone(), globs);
        }
        let mut rules = Vec::new();
        for (i, r) in config.rules.iter().enumerate() {
            if r.allow.is_empty() && r.provide.is_empty() {
                return Err(Error::Config(format!(
                    "authorization rule {} ({}.{}) allows nobody; list grants in `allow` or `provide`",
                    i + 1,
                    r.service,
                    r.method
                )));
            }
            let grant = |g: &String| match g.as_str() {
                "any" => Ok(Grant::Any),
                "authenticated" => Ok(Grant::Authenticated),
                g if g.starts_with("role:") => {
                    let role = &g["role:".len()..];
                    if roles.contains_key(role) {
                        Ok(Grant::Role(role.to_owned()))
                    } else {
                        Err(Error::Config(format!(
                            "authorization rule {} names role {role:?}, which [roles] does not define",
                            i + 1
                        )))
                    }
                }
                g => PrincipalPattern::parse("principal", g).map(Grant::Principal),
            };
            rules.push(Rule {
                service: check_glob("service", &r.service)?,
                method: check_glob("method", &r.method)?,
                allow: r.allow.iter().map(grant).collect::<Result<_, _>>()?,
                provide: r.provide.iter().map(grant).collect::<Result<_, _>>()?,
            });
        }
        Ok(Self { roles, rules })
    }

    /// Whether the policy allows everything (no rule is configured).
    pub fn is_open(&self) -> bool {
        self.rules.is_empty()
    }

    /// The roles `principal` belongs to.
    pub fn roles_of(&self, principal: &Principal) -> Vec<&str> {
        self.roles
            .iter()
            .filter(|(_, members)| members.iter().any(|m| m.matches(principal)))
            .map(|(name, _)| name.as_str())
            .collect()
    }

    fn grants(&self, grant: &Grant, principal: Option<&Principal>) -> bool {
        match (grant, principal) {
            (Grant::Any, _) => true,
            (_, None) => false,
            (Grant::Authenticated, Some(_)) => true,
            (Grant::Role(r), Some(p)) => self.roles[r].iter().any(|m| m.matches(p)),
            (Grant::Principal(g), Some(p)) => g.matches(p),
        }
    }

    /// Allows or denies `principal` calling `service.method`. `None` and anonymous
    /// principals are unauthenticated sessions.
    pub fn check(
        &self,
        principal: Option<&Principal>,
        service: &str,
        method: &str,
    ) -> Result<(), Denied> {
        self.decide("call", |r| &r.allow, principal, service, method)
    }

    /// Allows or denies `principal` providing (registering) `service.method`.
    pub fn check_provide(
        &self,
        principal: Option<&Principal>,
        service: &str,
        method: &str,
    ) -> Result<(), Denied> {
        self.decide("provide", |r| &r.provide, principal, service, method)
    }

    fn decide(
        &self,
        action: &'static str,
        grants: impl Fn(&Rule) -> &Vec<Grant>,
        principal: Option<&Principal>,
        service: &str,
        method: &str,
    ) -> Result<(), Denied> {
        if self.is_open() {
            return Ok(());
        }
        let authenticated = principal.filter(|p| p.is_authenticated());
        let allowed = self.rules.iter().any(|r| {
            r.service.matches(service)
                && r.method.matches(method)
                && grants(r).iter().any(|g| self.grants(g, authenticated))
        });
        if allowed {
            Ok(())
        } else {
            Err(Denied {
                action,
                who: authenticated.map_or_else(|| "anonymous".to_owned(), ToString::to_string),
                service: service.to_owned(),
                method: method.to_owned(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let g = |p: &str, t: &str| Glob(p.into()).matches(t);
        assert!(g("*", ""));
        assert!(g("*", "anything"));
        assert!(g("a", "a") && !g("a", "ab"));
        assert!(g("spiffe://x/ns/*", "spiffe://x/ns/a/b"));
        assert!(!g("spiffe://x/ns/*", "spiffe://x/other"));
        assert!(g("*.get", "inventory.get") && !g("*.get", "inventory.put"));
        assert!(g("a*b*c", "a-b-c") && g("a*b*c", "abc") && !g("a*b*c", "acb"));
        assert!(!g("ab*ba", "aba"));
    }

    fn policy(json: &str) -> Policy {
        Policy::new(&serde_json::from_str(json).unwrap()).unwrap()
    }

    #[test]
    fn no_rules_allow_everything_and_any_rule_denies_the_rest() {
        assert!(Policy::default().check(None, "a", "b").is_ok());
        let p = policy(r#"{"rules":[{"service":"a","method":"b","allow":["any"]}]}"#);
        assert!(p.check(None, "a", "b").is_ok());
        let d = p.check(None, "a", "c").unwrap_err();
        assert_eq!(d.who, "anonymous");
        assert!(d.to_string().contains("a.c"));
    }

    #[test]
    fn sessions_gain_permissions_additively() {
        let p = policy(
            r#"{"roles":{"admin":["user:root"]},"rules":[
                {"service":"pub","allow":["any"]},
                {"service":"app","allow":["authenticated"]},
                {"service":"ops","allow":["role:admin"]},
                {"service":"own","allow":["token:ci"]}]}"#,
        );
        let anon = Principal::anonymous(polycall_core::PeerAddr::named("x"));
        let user = Principal::user("bob");
        let root = Principal::user("root");
        let ci = Principal::token("ci");
        for (who, svc, ok) in [
            (&anon, "pub", true),
            (&anon, "app", false),
            (&user, "pub", true),
            (&user, "app", true),
            (&user, "ops", false),
            (&root, "ops", true),
            (&root, "own", false),
            (&ci, "own", true),
            (&ci, "ops", false),
        ] {
            assert_eq!(p.check(Some(who), svc, "m").is_ok(), ok, "{who} {svc}");
        }
        assert_eq!(p.roles_of(&root), vec!["admin"]);
        // A token named like a user is not that user.
        assert!(
            p.check(Some(&Principal::token("root")), "ops", "m")
                .is_err()
        );
    }

    #[test]
    fn unknown_roles_and_empty_grants_are_refused() {
        let bad = |json: &str| Policy::new(&serde_json::from_str(json).unwrap()).is_err();
        assert!(bad(r#"{"rules":[{"service":"a","allow":["role:nope"]}]}"#));
        assert!(bad(r#"{"rules":[{"service":"a","allow":[]}]}"#));
        assert!(bad(
            r#"{"rules":[{"service":"a","provide":["role:nope"]}]}"#
        ));
        assert!(bad(r#"{"rules":[{"service":"","allow":["any"]}]}"#));
        assert!(bad(r#"{"rules":[{"service":"a","allow":["alice"]}]}"#));
        assert!(bad(
            r#"{"roles":{"r":["user:"]},"rules":[{"service":"a","allow":["role:r"]}]}"#
        ));
    }
}
