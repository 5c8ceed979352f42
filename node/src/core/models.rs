//! The models learned from this replica's execution history — run time, peak memory and peak
//! GPU memory — in one service with one retrain rule, used by the control loop (shortest
//! predicted first), the autoscaler, `mem: auto`, predictions, insights and reports alike.
//!
//! Training runs off the async runtime and under no lock: one caller trains (single flight),
//! the others wait for its result on a watch; readers that cannot wait take the current models.

use std::sync::{Arc, Mutex};

use testmesh_consensus::store::LedgerReader;
use testmesh_planner::predictor::Predictor;
use testmesh_planner::predictor::history::{self, Target};
use thiserror::Error;
use tokio::sync::watch;

/// Most attempts that may finish between two trainings. Training reads the whole (bounded)
/// history, so retraining every few dozen attempts made its cost per task grow with the
/// history; retraining after a tenth more data, and at least every this many, keeps the
/// models current at a cost per task that does not grow.
const RETRAIN_AFTER_AT_MOST: u64 = 2_000;

/// Whether models trained on `seen` finished attempts are due for retraining at `total`:
/// after a tenth more attempts (every new one while the history is small), at most
/// [`RETRAIN_AFTER_AT_MOST`].
pub fn due(seen: Option<u64>, total: u64) -> bool {
    match seen {
        None => true,
        Some(s) => total.saturating_sub(s) >= (1 + s / 10).min(RETRAIN_AFTER_AT_MOST),
    }
}

/// One model per predicted quantity.
pub struct ModelSet {
    pub duration: Predictor,
    pub memory: Predictor,
    pub gpu_memory: Predictor,
    /// Finished attempts they learned from (as counted by the ledger, ever).
    pub seen: u64,
    /// Records of the history they learned from.
    pub samples: usize,
    /// Bumped on every training: caches of predictions key on it.
    pub generation: u64,
}

#[derive(Debug, Clone, Error)]
pub enum ModelError {
    #[error("training failed: {0}")]
    Failed(String),
}

#[derive(Default)]
struct State {
    current: Option<Arc<ModelSet>>,
    training: bool,
}

/// A cloneable handle to the models of this node.
#[derive(Clone)]
pub struct Models {
    ledger: LedgerReader,
    state: Arc<Mutex<State>>,
    /// Bumped when a training ends (either way), to wake callers waiting for it.
    trained: Arc<watch::Sender<u64>>,
}

impl Models {
    pub fn new(ledger: LedgerReader) -> Self {
        Models {
            ledger,
            state: Arc::default(),
            trained: Arc::new(watch::channel(0).0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The models trained last, without waiting (None before the first training).
    pub fn current(&self) -> Option<Arc<ModelSet>> {
        self.lock().current.clone()
    }

    /// Models no staler than the retrain rule allows: trains first when due (or waits for the
    /// training under way).
    pub async fn fresh(&self) -> Result<Arc<ModelSet>, ModelError> {
        let mut trained = self.trained.subscribe();
        enum Next {
            Use(Arc<ModelSet>),
            Train,
            Wait,
        }
        loop {
            let total = self.ledger.read().history_total();
            let next = {
                let mut s = self.lock();
                match &s.current {
                    Some(m) if !due(Some(m.seen), total) => Next::Use(m.clone()),
                    _ if s.training => Next::Wait, // someone else is training
                    _ => {
                        s.training = true;
                        Next::Train
                    }
                }
            };
            match next {
                Next::Use(m) => return Ok(m),
                Next::Train => return self.train(total).await,
                Next::Wait => {}
            }
            if trained.changed().await.is_err() {
                return Err(ModelError::Failed("the node is shutting down".into()));
            }
            if let Some(m) = self.current() {
                return Ok(m); // what that training produced (fresh enough for this call)
            }
        }
    }

    /// Retrains when due; for loops that keep the models warm (the leader's).
    pub async fn refresh(&self) -> Result<(), ModelError> {
        self.fresh().await.map(|_| ())
    }

    /// Trains on the history as it is now; the caller has set `training`.
    async fn train(&self, total: u64) -> Result<Arc<ModelSet>, ModelError> {
        let (durations, memory, gpu_memory, samples) = {
            let l = self.ledger.read();
            (
                history::samples(l.history(), Target::DurationSecs),
                history::samples(l.history(), Target::PeakRssMib),
                history::samples(l.history(), Target::PeakGpuMemoryMib),
                l.history().count(),
            )
        };
        let generation = self.current().map_or(1, |m| m.generation + 1);
        let trained = tokio::task::spawn_blocking(move || {
            let opts = history::options();
            Ok::<_, testmesh_planner::Error>(ModelSet {
                duration: Predictor::train(&durations, &opts)?,
                memory: Predictor::train(&memory, &opts)?,
                gpu_memory: Predictor::train(&gpu_memory, &opts)?,
                seen: total,
                samples,
                generation,
            })
        })
        .await;
        let result = match trained {
            Ok(Ok(m)) => {
                tracing::debug!("models retrained on {total} finished attempts");
                Ok(Arc::new(m))
            }
            Ok(Err(e)) => Err(ModelError::Failed(e.to_string())),
            Err(e) => Err(ModelError::Failed(format!("training stopped: {e}"))),
        };
        {
            let mut s = self.lock();
            s.training = false;
            if let Ok(m) = &result {
                s.current = Some(m.clone());
            }
        }
        self.trained.send_modify(|n| *n += 1);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retrain_rule_grows_with_the_history_up_to_a_cap() {
        assert!(due(None, 0));
        assert!(!due(Some(0), 0));
        assert!(due(Some(0), 1));
        assert!(!due(Some(100), 110));
        assert!(due(Some(100), 111));
        assert!(!due(Some(10_000), 11_000));
        assert!(due(Some(10_000), 11_001));
        // However long the history, at most 2,000 attempts between trainings.
        assert!(!due(Some(1_000_000), 1_001_999));
        assert!(due(Some(1_000_000), 1_002_000));
    }
}
