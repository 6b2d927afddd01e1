//! The etcd registry: each runtime's entry under `{prefix}/runtimes/{name}`, attached
//! to a lease it keeps alive, so a runtime that dies disappears within the lease's TTL.
//!
//! Spoken over etcd's v3 JSON gateway (`/v3/lease/grant`, `/v3/kv/put`,
//! `/v3/lease/keepalive`, `/v3/kv/range`, `/v3/lease/revoke`; keys and values base64)
//! with hyper's HTTP/1.1 client: no gRPC stack for four requests.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value as Json, json};

use super::Entry;

/// Longest an etcd request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// A runtime's registration in etcd.
pub(crate) struct Etcd {
    /// `http://HOST:PORT` of each etcd member; requests go to the first that answers.
    endpoints: Vec<String>,
    prefix: String,
    ttl: Duration,
    lease: Option<Lease>,
}

struct Lease {
    id: String,
    renewed: Instant,
    /// The entry last written under it.
    written: Option<Entry>,
}

impl Etcd {
    /// A registry on the etcd members `endpoints` (comma-separated URLs), under `prefix`.
    pub(crate) fn new(endpoints: &str, prefix: &str, ttl: Duration) -> Result<Self, String> {
        let endpoints: Vec<String> = endpoints
            .split(',')
            .map(|e| e.trim().trim_end_matches('/').to_owned())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() || endpoints.iter().any(|e| !e.starts_with("http://")) {
            return Err(
                "etcd endpoints are http://HOST:PORT URLs, comma-separated (etcd:http://127.0.0.1:2379)"
                    .into(),
            );
        }
        Ok(Self {
            endpoints,
            prefix: prefix.trim_end_matches('/').to_owned(),
            ttl: ttl.max(Duration::from_secs(2)),
            lease: None,
        })
    }

    fn key(&self, name: &str) -> String {
        format!("{}/runtimes/{name}", self.prefix)
    }

    /// Writes `me` under a live lease: grants one when there is none (or etcd forgot
    /// it), renews it every third of its TTL, rewrites the entry when it changed.
    pub(crate) async fn publish(&mut self, me: &Entry) -> Result<(), String> {
        if let Some(lease) = &self.lease
            && lease.renewed.elapsed() >= self.ttl / 3
        {
            let answer = self
                .request("/v3/lease/keepalive", json!({"ID": lease.id}))
                .await?;
            let ttl = answer["result"]["TTL"]
                .as_str()
                .and_then(|t| t.parse::<i64>().ok())
                .unwrap_or(0);
            if ttl <= 0 {
                tracing::warn!("discovery: the etcd lease expired; registering again");
                self.lease = None;
            } else if let Some(lease) = &mut self.lease {
                lease.renewed = Instant::now();
            }
        }
        if self.lease.is_none() {
            let granted = self
                .request("/v3/lease/grant", json!({"TTL": self.ttl.as_secs()}))
                .await?;
            let id = granted["ID"]
                .as_str()
                .ok_or_else(|| format!("etcd granted no lease: {granted}"))?
                .to_owned();
            self.lease = Some(Lease {
                id,
                renewed: Instant::now(),
                written: None,
            });
        }
        let lease = self.lease.as_ref().expect("granted above");
        if lease.written.as_ref() != Some(me) {
            let value = serde_json::to_vec(me).map_err(|e| e.to_string())?;
            self.request(
                "/v3/kv/put",
                json!({"key": B64.encode(self.key(&me.name)), "value": B64.encode(value), "lease": lease.id}),
            )
            .await?;
            if let Some(lease) = &mut self.lease {
                lease.written = Some(me.clone());
            }
        }
        Ok(())
    }

    /// Every runtime registered now (entries that do not parse are skipped).
    pub(crate) async fn entries(&self) -> Result<Vec<Entry>, String> {
        let start = format!("{}/runtimes/", self.prefix);
        let mut end = start.clone().into_bytes();
        *end.last_mut().expect("not empty") += 1; // the prefix's range: '/' + 1 = '0'
        let answer = self
            .request(
                "/v3/kv/range",
                json!({"key": B64.encode(&start), "range_end": B64.encode(&end)}),
            )
            .await?;
        Ok(answer["kvs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|kv| {
                let value = B64.decode(kv["value"].as_str()?).ok()?;
                serde_json::from_slice(&value).ok()
            })
            .collect())
    }

    /// Removes this runtime's entry at once (its lease is revoked).
    pub(crate) async fn withdraw(&mut self) {
        if let Some(lease) = self.lease.take()
            && let Err(e) = self
                .request("/v3/lease/revoke", json!({"ID": lease.id}))
                .await
        {
            tracing::debug!("discovery: revoking the etcd lease: {e}");
        }
    }

    /// POSTs `body` to `path` on the first member that answers.
    async fn request(&self, path: &str, body: Json) -> Result<Json, String> {
        let mut last = String::new();
        for endpoint in &self.endpoints {
            match tokio::time::timeout(REQUEST_TIMEOUT, post(endpoint, path, &body)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => last = format!("{endpoint}{path}: {e}"),
                Err(_) => last = format!("{endpoint}{path}: no answer in {REQUEST_TIMEOUT:?}"),
            }
        }
        Err(last)
    }
}

async fn post(endpoint: &str, path: &str, body: &Json) -> Result<Json, String> {
    let authority = endpoint.trim_start_matches("http://");
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let request = hyper::Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    driver.abort();
    // The keepalive answer is a stream of JSON objects; the first is the one asked for.
    let first = serde_json::Deserializer::from_slice(&bytes)
        .into_iter::<Json>()
        .next()
        .ok_or_else(|| format!("HTTP {status}, an empty answer"))?
        .map_err(|e| format!("HTTP {status}: {e}"))?;
    if !status.is_success() || first.get("error").is_some() {
        return Err(format!("HTTP {status}: {first}"));
    }
    Ok(first)
}
