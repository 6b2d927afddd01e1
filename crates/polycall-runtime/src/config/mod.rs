//! `polycall.toml` (the crate polycall-config, re-exported here whole) and what a runtime
//! makes of it: [`RuntimeConfigExt`] turns a [`LoadedConfig`] into a [`RuntimeConfig`],
//! and [`security`] reads the secrets `[tls]` and `[auth]` refer to.
//!
//! ```
//! use polycall_runtime::config::{Config, RuntimeConfigExt};
//! let loaded = Config::load(None, &[], &["runtime.endpoint=127.0.0.1:0".into()]).unwrap();
//! assert_eq!(loaded.to_runtime_config().endpoint.to_string(), "127.0.0.1:0");
//! ```

pub mod security;

use std::time::Duration;

pub use polycall_config::*;

use crate::RuntimeConfig;

/// A loaded configuration as a runtime's settings.
pub trait RuntimeConfigExt {
    /// The runtime's configuration without the security settings. (TLS and `[auth]`
    /// need their secrets read: [`runtime_config`](Self::runtime_config); `[log]` is
    /// for the program, which sets up logging.)
    fn to_runtime_config(&self) -> RuntimeConfig;

    /// The runtime configuration with its security settings: TLS, the authenticator
    /// and the authorization policy, every secret read from its reference.
    fn runtime_config(&self) -> Result<RuntimeConfig, security::SecurityError>;
}

impl RuntimeConfigExt for LoadedConfig {
    fn to_runtime_config(&self) -> RuntimeConfig {
        let c = &self.config;
        let mut rc = RuntimeConfig::default();
        if let Ok(e) = c.runtime.endpoint.parse() {
            rc.endpoint = e;
        }
        rc.state_dir = c.runtime.state_dir.clone();
        rc.server.max_connections = c.runtime.max_connections;
        rc.server.drain_timeout = Duration::from_millis(c.runtime.drain_timeout_ms);
        let conn = &mut rc.server.connection;
        let limits = &mut conn.proto.settings.limits;
        limits.max_frame = c.limits.max_frame;
        limits.max_message = c.limits.max_message;
        limits.max_in_flight = c.limits.max_in_flight;
        limits.initial_window = c.limits.initial_window;
        conn.proto.reassembly_budget = conn
            .proto
            .reassembly_budget
            .max(c.limits.max_message as usize);
        conn.handshake_timeout = Duration::from_millis(c.limits.handshake_timeout_ms);
        conn.frame_timeout = Duration::from_millis(c.limits.frame_timeout_ms);
        conn.write_stall_timeout = Duration::from_millis(c.limits.write_stall_timeout_ms);
        conn.max_concurrent_handlers = c.limits.max_concurrent_handlers;
        rc.qos.rate_limit = c.qos.rate_limit_per_second.map(|n| {
            polycall_net::rate_limit::RateLimitConfig::default()
                .per_second(n)
                .burst(c.qos.rate_limit_burst.unwrap_or(n))
        });
        rc.compat.pcr1 = c.compat.pcr1;
        rc.compat.legacy_v1 = c.compat.legacy_v1;
        rc.compat.fixtures = c.compat.fixtures;
        rc.compat.when_secured = c.compat.when_secured;
        rc.debug_methods = c.runtime.debug_methods;
        rc.state = crate::StateSettings {
            machine_dir: c.state.machine_dir.clone(),
            database: c.state.database.clone(),
            batch_window: Duration::from_millis(c.state.batch_window_ms),
            keep_snapshots: c.state.keep_snapshots as usize,
            backup_every: c.state.backup_every_s.map(Duration::from_secs),
            backup_keep: c.state.backup_keep as usize,
            backup_dir: c.state.backup_dir.clone(),
        };
        rc.gateway = c
            .gateway
            .listen
            .as_deref()
            .and_then(|l| l.parse().ok())
            .map(|listen| {
                crate::GatewaySettings::new(listen)
                    .max_body(usize::try_from(c.gateway.max_body).unwrap_or(usize::MAX))
                    .timeout(Duration::from_millis(c.gateway.timeout_ms))
            })
            .map(|g| match &c.gateway.routes {
                Some(file) => g.routes(file.clone()),
                None => g,
            });
        // Validated with the file: the registry parses.
        rc.discovery = c
            .discovery
            .registry
            .as_deref()
            .and_then(|r| crate::DiscoveryRegistry::parse(r).ok())
            .map(|registry| {
                let registry = match registry {
                    crate::DiscoveryRegistry::Etcd { endpoints, .. } => {
                        crate::DiscoveryRegistry::Etcd {
                            endpoints,
                            prefix: c.discovery.prefix.clone(),
                        }
                    }
                    other => other,
                };
                let mut d = crate::DiscoverySettings::new(registry)
                    .ttl(Duration::from_secs(c.discovery.ttl_s))
                    .refresh(Duration::from_millis(c.discovery.refresh_ms));
                if let Some(n) = &c.discovery.name {
                    d = d.name(n.clone());
                }
                if let Some(a) = &c.discovery.advertise {
                    d = d.advertise(a.clone());
                }
                d
            });
        rc.observe.metrics = c.observe.metrics;
        rc.observe.admin = c.admin.listen.as_deref().and_then(|l| l.parse().ok());
        rc.observe.otlp_endpoint = c.observe.otlp_endpoint.clone();
        rc.observe.trace_sample = c.observe.trace_sample_percent as f64 / 100.0;
        rc.observe.service_name = c.observe.service_name.clone();
        // Validated with the file: the members parse.
        if let (Some(id), Some(Ok(members))) = (
            c.cluster.node_id,
            c.cluster
                .members
                .as_deref()
                .map(crate::ClusterSettings::parse_members),
        ) {
            let mut settings = crate::ClusterSettings::new(id, members).timing(
                std::time::Duration::from_millis(c.cluster.heartbeat_ms),
                std::time::Duration::from_millis(c.cluster.election_timeout_ms),
            );
            settings.data_file = c.cluster.data_file.clone();
            settings.snapshot_every = c.cluster.snapshot_every;
            settings.peer_identities = c.cluster.peer_identities.clone();
            rc.cluster = Some(settings);
        }
        rc.qos.concurrency = c
            .qos
            .max_concurrency
            .map(|n| polycall_net::limit::ConcurrencyLimitConfig::default().max(n));
        rc
    }

    fn runtime_config(&self) -> Result<RuntimeConfig, security::SecurityError> {
        let mut rc = self.to_runtime_config();
        security::Security::from_config(&self.config)?.apply(&mut rc);
        Ok(rc)
    }
}
