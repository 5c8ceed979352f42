//! The state of scheduled reports (`[[reports]]`), shared between the loop that makes them
//! and the API that shows them. In memory: a new leader starts each schedule afresh.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// One `[[reports]]` entry and how its deliveries went.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ReportStatus {
    pub name: String,
    pub schedule: String,
    /// e.g. `24h`.
    pub window: String,
    /// `pdf` or `html`.
    pub format: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    /// Unix ms of the next scheduled run (on the leader).
    pub next_ms: Option<u64>,
    /// The newest report made: when, and the file it was written to.
    pub last_made_ms: Option<u64>,
    pub last_file: Option<String>,
    /// When every target last took a report.
    pub last_delivered_ms: Option<u64>,
    /// The newest delivery failure, with its target; cleared by a success.
    pub last_error: Option<String>,
    /// Tries of the current report so far (1 when the first one worked).
    pub attempts: u32,
    /// When the next try of a failed delivery is due.
    pub retry_ms: Option<u64>,
    pub delivered: u64,
    pub failed: u64,
}

/// Every report's status, in config order.
#[derive(Debug, Clone, Default)]
pub struct Reports(Arc<Mutex<Vec<ReportStatus>>>);

impl Reports {
    pub fn get(&self) -> Vec<ReportStatus> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn update(&self, i: usize, f: impl FnOnce(&mut ReportStatus)) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = g.get_mut(i) {
            f(s);
        }
    }

    pub fn set(&self, all: Vec<ReportStatus>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = all;
    }
}
