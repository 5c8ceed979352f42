//! Accuracy metrics for predictions against measured values.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    pub rows: usize,
    /// Mean absolute error, in the target's unit.
    pub mae: f64,
    /// Mean absolute percentage error over the rows whose true value is > 0 (as a fraction).
    pub mape: f64,
    /// Rows left out of the MAPE because their true value is 0.
    pub mape_skipped: usize,
    /// Coefficient of determination (1 is perfect; 0 is as good as predicting the mean).
    pub r2: f64,
}

impl Metrics {
    pub fn of(predicted: &[f64], truth: &[f64]) -> Metrics {
        assert_eq!(predicted.len(), truth.len(), "one prediction per row");
        let n = truth.len();
        if n == 0 {
            return Metrics {
                rows: 0,
                mae: 0.0,
                mape: 0.0,
                mape_skipped: 0,
                r2: 0.0,
            };
        }
        let mae = predicted
            .iter()
            .zip(truth)
            .map(|(p, t)| (p - t).abs())
            .sum::<f64>()
            / n as f64;
        let pct: Vec<f64> = predicted
            .iter()
            .zip(truth)
            .filter(|(_, t)| **t > 0.0)
            .map(|(p, t)| (p - t).abs() / t)
            .collect();
        let mean = truth.iter().sum::<f64>() / n as f64;
        let ss_tot: f64 = truth.iter().map(|t| (t - mean).powi(2)).sum();
        let ss_res: f64 = predicted
            .iter()
            .zip(truth)
            .map(|(p, t)| (t - p).powi(2))
            .sum();
        Metrics {
            rows: n,
            mae,
            mape: if pct.is_empty() {
                0.0
            } else {
                pct.iter().sum::<f64>() / pct.len() as f64
            },
            mape_skipped: n - pct.len(),
            r2: if ss_tot > 0.0 {
                1.0 - ss_res / ss_tot
            } else {
                0.0
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let m = Metrics::of(&[2.0, 4.0, 0.0], &[1.0, 4.0, 0.0]);
        assert_eq!(m.rows, 3);
        assert!((m.mae - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.mape_skipped, 1);
        assert!((m.mape - 0.5).abs() < 1e-12);
        let perfect = Metrics::of(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]);
        assert_eq!(perfect.r2, 1.0);
        let mean = Metrics::of(&[2.0, 2.0, 2.0], &[1.0, 2.0, 3.0]);
        assert!(mean.r2.abs() < 1e-12);
    }
}
