//! The scaler handle: what the autoscaler's edge on this node knows of its providers (connected
//! or not, failures, back-off) and of its last decision. The scaling loop and the operations it
//! starts update it; the API reads it.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use testmesh_providers::Provider;

use crate::config::providers as config;

/// A configured provider, connected once it first answers.
pub struct ProviderEntry {
    pub spec: config::FileProvider,
    pub connected: Option<Arc<dyn Provider>>,
    pub error: Option<String>,
    pub failures: u32,
    /// Failures ever (for the metrics; `failures` counts the current run of them).
    pub errors_total: u64,
    pub backoff_until: Option<Instant>,
}

impl ProviderEntry {
    pub fn new(spec: config::FileProvider) -> Self {
        ProviderEntry {
            spec,
            connected: None,
            error: None,
            failures: 0,
            errors_total: 0,
            backoff_until: None,
        }
    }
}

/// What the API shows of the scaler on this node.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScalerView {
    pub leading: bool,
    pub last_reason: Option<String>,
    pub providers: Vec<ProviderView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProviderView {
    pub name: String,
    pub kind: String,
    pub connected: bool,
    pub failures: u32,
    pub errors_total: u64,
    pub backoff_secs: Option<f64>,
    pub error: Option<String>,
}

/// State shared between the loop and the operations it spawns.
pub struct Shared {
    pub providers: BTreeMap<String, ProviderEntry>,
    /// Intents with a launch or termination under way on this node.
    pub busy: HashSet<u64>,
    pub view: ScalerView,
}

pub type SharedScaler = Arc<Mutex<Shared>>;

pub fn shared(providers: Vec<config::FileProvider>) -> SharedScaler {
    Arc::new(Mutex::new(Shared {
        providers: providers
            .into_iter()
            .map(|p| (p.name(), ProviderEntry::new(p)))
            .collect(),
        busy: HashSet::new(),
        view: ScalerView::default(),
    }))
}

pub fn lock(s: &SharedScaler) -> std::sync::MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// The API's view: what this node's scaler knows (only the leader's is active).
pub fn view(shared: &SharedScaler, now: Instant) -> ScalerView {
    let s = lock(shared);
    let mut v = s.view.clone();
    v.providers = s
        .providers
        .iter()
        .map(|(name, p)| ProviderView {
            name: name.clone(),
            kind: p.spec.kind().to_string(),
            connected: p.connected.is_some(),
            failures: p.failures,
            errors_total: p.errors_total,
            backoff_secs: p
                .backoff_until
                .filter(|t| *t > now)
                .map(|t| (t - now).as_secs_f64()),
            error: p.error.clone(),
        })
        .collect();
    v
}
