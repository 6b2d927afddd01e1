//! How this runtime dials other runtimes (its cluster peers, the runtimes discovery
//! finds): with its own TLS settings when it serves TLS — its certificate as the client
//! certificate, its CA bundle for theirs — so runtime-to-runtime traffic is mutual TLS
//! with the identities of the own CA.

use std::sync::Arc;

use polycall_net::ChannelConfig;
use polycall_security::{ClientAuth, ClientTls};

use crate::{RuntimeConfig, RuntimeError};

/// The channel settings to reach another runtime.
pub(crate) fn peer_channel(config: &RuntimeConfig) -> Result<ChannelConfig, RuntimeError> {
    let mut channel = ChannelConfig::default();
    let Some(tls) = &config.tls else {
        return Ok(channel);
    };
    let Some(ca) = &tls.ca else {
        return Err(RuntimeError::State(
            "a runtime serving TLS that dials other runtimes (cluster, discovery) needs tls.ca_file: the CA their certificates chain to"
                .into(),
        ));
    };
    let mut client = ClientTls::default().ca(ca.clone());
    client.cert_chain = tls.cert_chain.clone();
    client.key = tls.key.clone();
    client.hsm_key = tls.hsm_key.clone();
    client.crls = tls.crls.clone();
    client.allow_unknown_revocation = tls.allow_unknown_revocation;
    let built = client.build().map_err(|e| {
        RuntimeError::State(format!("the TLS settings to reach other runtimes: {e}"))
    })?;
    channel.transport = Arc::new(polycall_net::tls::Tls::client(built));
    if tls.client_auth != ClientAuth::Off {
        channel.connection.credentials = Some(polycall_net::auth::Credentials::Certificate);
    }
    Ok(channel)
}
