//! Who provides which method: providers register methods on their connection; calls are
//! routed to the provider with the fewest calls outstanding, passing over providers the
//! outlier detector ejected (unless every provider is).

use std::collections::BTreeMap;
use std::sync::RwLock;

use std::sync::atomic::{AtomicUsize, Ordering};

use std::sync::Arc;

use polycall_core::{CallKind, MethodInfo, MethodName, ServiceName};
use polycall_net::ConnectionHandle;
use polycall_observe::outlier::{Ejections, EndpointSnapshot, EndpointStats};

/// One provider of one method.
#[derive(Debug, Clone)]
pub struct Provision {
    /// The provider's connection.
    pub connection: ConnectionHandle,
    /// A number naming the provider (its connection) in `sys.describe`.
    pub provider_id: u64,
    /// What the provider says about the method.
    pub info: MethodInfo,
    /// What its calls of this method did (the outlier detector reads them).
    pub stats: Arc<EndpointStats>,
}

/// The registry of provided methods.
#[derive(Debug, Default)]
pub struct Registry {
    methods: RwLock<BTreeMap<(ServiceName, MethodName), Vec<Provision>>>,
    /// Provisions of streaming methods: while 0, no call needs a kind lookup.
    streaming: AtomicUsize,
}

type Methods = BTreeMap<(ServiceName, MethodName), Vec<Provision>>;

impl Registry {
    /// Adds `provider_id` as a provider of each method (again: replaces its info).
    pub fn register(
        &self,
        provision: &[(ServiceName, MethodName, MethodInfo)],
        connection: &ConnectionHandle,
        provider_id: u64,
    ) {
        let mut m = self.methods.write().unwrap_or_else(|e| e.into_inner());
        for (s, n, info) in provision {
            let list = m.entry((s.clone(), n.clone())).or_default();
            let stats = list
                .iter()
                .find(|p| p.provider_id == provider_id)
                .map_or_else(Default::default, |p| p.stats.clone());
            list.retain(|p| p.provider_id != provider_id);
            list.push(Provision {
                connection: connection.clone(),
                provider_id,
                info: info.clone(),
                stats,
            });
        }
        self.recount(&m);
    }

    fn recount(&self, m: &Methods) {
        let n = m
            .values()
            .flatten()
            .filter(|p| p.info.kind.is_streaming())
            .count();
        self.streaming.store(n, Ordering::Release);
    }

    /// Whether any provider serves a streaming method.
    pub fn any_streaming(&self) -> bool {
        self.streaming.load(Ordering::Acquire) > 0
    }

    /// The shape of `service.method`'s messages, as its providers announced it.
    pub fn kind(&self, service: &ServiceName, method: &MethodName) -> Option<CallKind> {
        let m = self.methods.read().unwrap_or_else(|e| e.into_inner());
        let key = (service.clone(), method.clone());
        m.get(&key)?.first().map(|p| p.info.kind)
    }

    /// The live provider of `service.method` with the fewest calls outstanding, and
    /// the shape of the method's messages as it announced them.
    pub fn pick_stream(&self, service: &str, method: &str) -> Option<(ConnectionHandle, CallKind)> {
        let m = self.methods.read().unwrap_or_else(|e| e.into_inner());
        let key = (
            ServiceName::new(service).ok()?,
            MethodName::new(method).ok()?,
        );
        polycall_net::least_loaded(m.get(&key)?, |p| &p.connection)
            .map(|p| (p.connection.clone(), p.info.kind))
    }

    /// Removes `provider_id` from the given methods; returns those it did not provide.
    pub fn unregister(
        &self,
        methods: &[(ServiceName, MethodName)],
        provider_id: u64,
    ) -> Vec<String> {
        let mut m = self.methods.write().unwrap_or_else(|e| e.into_inner());
        let mut missing = Vec::new();
        for key in methods {
            let found = match m.get_mut(key) {
                Some(list) => {
                    let before = list.len();
                    list.retain(|p| p.provider_id != provider_id);
                    let found = list.len() != before;
                    if list.is_empty() {
                        m.remove(key);
                    }
                    found
                }
                None => false,
            };
            if !found {
                missing.push(format!("{}.{}", key.0, key.1));
            }
        }
        self.recount(&m);
        missing
    }

    /// Removes every method of `provider_id` (its connection ended).
    pub fn remove_provider(&self, provider_id: u64) {
        let mut m = self.methods.write().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, list| {
            list.retain(|p| p.provider_id != provider_id);
            !list.is_empty()
        });
        self.recount(&m);
    }

    /// The live provider of `service.method` with the fewest calls outstanding, and
    /// where to record what its call does. Providers in `ejected` are passed over
    /// while another provider is live.
    pub fn pick(
        &self,
        service: &ServiceName,
        method: &MethodName,
        ejected: &Ejections,
    ) -> Option<(ConnectionHandle, Arc<EndpointStats>)> {
        let m = self.methods.read().unwrap_or_else(|e| e.into_inner());
        // The names share their text: the key costs no allocation.
        let key = (service.clone(), method.clone());
        let list = m.get(&key)?;
        let (service, method) = (service.as_str(), method.as_str());
        let healthy = list
            .iter()
            .filter(|p| !ejected.is_ejected(service, method, p.provider_id));
        polycall_net::least_loaded(healthy, |p| &p.connection)
            .or_else(|| polycall_net::least_loaded(list, |p| &p.connection))
            .map(|p| (p.connection.clone(), p.stats.clone()))
    }

    /// Every provision's counts: `(service.method, provider id, counts)`.
    pub fn endpoint_stats(&self) -> Vec<(Arc<str>, u64, EndpointSnapshot)> {
        let m = self.methods.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for ((s, n), list) in m.iter() {
            let name: Arc<str> = Arc::from(format!("{s}.{n}"));
            for p in list {
                out.push((name.clone(), p.provider_id, p.stats.snapshot()));
            }
        }
        out
    }

    /// Each provider and the methods it provides.
    pub fn by_provider(&self) -> BTreeMap<u64, Vec<String>> {
        let m = self.methods.read().unwrap_or_else(|e| e.into_inner());
        let mut out: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for ((s, n), list) in m.iter() {
            for p in list {
                out.entry(p.provider_id)
                    .or_default()
                    .push(format!("{s}.{n}"));
            }
        }
        out
    }

    /// Whether any provider serves a method of `service`.
    pub fn has_service(&self, service: &str) -> bool {
        let m = self.methods.read().unwrap_or_else(|e| e.into_inner());
        m.keys().any(|(s, _)| s.as_str() == service)
    }

    /// Every provided method with its providers' ids.
    pub fn snapshot(&self) -> Vec<(String, MethodInfo, Vec<u64>)> {
        let m = self.methods.read().unwrap_or_else(|e| e.into_inner());
        m.iter()
            .map(|((s, n), list)| {
                (
                    format!("{s}.{n}"),
                    list[0].info.clone(),
                    list.iter().map(|p| p.provider_id).collect(),
                )
            })
            .collect()
    }

    /// Number of distinct providers.
    pub fn providers(&self) -> usize {
        let m = self.methods.read().unwrap_or_else(|e| e.into_inner());
        let mut ids: Vec<u64> = m.values().flatten().map(|p| p.provider_id).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    }
}
