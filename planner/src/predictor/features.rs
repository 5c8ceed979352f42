//! Turning raw feature values (strings, as they come from a CSV or a task spec) into numbers.
//!
//! A column whose non-empty training values all parse as numbers is numeric: it becomes a
//! signed `ln(1 + |x|)` value plus a missing flag (log scale because run time grows roughly
//! multiplicatively with steps, images, sizes). A numeric column with few distinct values also
//! gets one-hot levels, so that a non-linear effect (say 30 vs 40 steps on different models) is
//! not forced onto a line. Every other column is categorical: one-hot for each level seen at
//! least `min_count` times, the rest share an "other" slot.

use std::collections::{BTreeMap, HashMap};

/// Numeric columns with at most this many distinct values also get one-hot levels.
const FEW_LEVELS: usize = 16;
/// Most one-hot levels per categorical column (the most frequent ones); the rest are "other".
const MAX_LEVELS: usize = 512;

#[derive(Debug, Clone)]
enum Column {
    Numeric {
        name: String,
        /// Level → slot, for numeric columns with few distinct values.
        levels: HashMap<String, usize>,
    },
    Categorical {
        name: String,
        levels: HashMap<String, usize>,
        other: usize,
    },
}

/// A fitted encoding: which slot each feature value goes to.
#[derive(Debug, Clone)]
pub struct Encoder {
    columns: Vec<Column>,
    width: usize,
}

fn signed_log(x: f64) -> f64 {
    x.signum() * x.abs().ln_1p()
}

impl Encoder {
    /// Learns the encoding of `names` from training rows.
    pub fn fit(names: &[String], rows: &[&BTreeMap<String, String>], min_count: usize) -> Encoder {
        // Slot 0 is the constant (intercept).
        let mut width = 1;
        let mut columns = Vec::new();
        for name in names {
            let mut counts: HashMap<&str, usize> = HashMap::new();
            let mut numeric = true;
            for r in rows {
                let v = r.get(name).map(String::as_str).unwrap_or("").trim();
                if !v.is_empty() && v.parse::<f64>().map_or(true, |x| !x.is_finite()) {
                    numeric = false;
                }
                *counts.entry(v).or_default() += 1;
            }
            let mut frequent: Vec<(&str, usize)> = counts
                .iter()
                .filter(|(v, c)| **c >= min_count && !v.is_empty())
                .map(|(v, c)| (*v, *c))
                .collect();
            // Most frequent first (ties by value, for a deterministic encoding).
            frequent.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            frequent.truncate(MAX_LEVELS);
            let frequent: Vec<&str> = frequent.into_iter().map(|(v, _)| v).collect();
            if numeric {
                width += 2; // value, missing flag
                let mut levels = HashMap::new();
                if counts.len() <= FEW_LEVELS {
                    for v in frequent {
                        levels.insert(v.to_string(), width);
                        width += 1;
                    }
                }
                columns.push(Column::Numeric {
                    name: name.clone(),
                    levels,
                });
            } else {
                let mut levels = HashMap::new();
                for v in frequent {
                    levels.insert(v.to_string(), width);
                    width += 1;
                }
                columns.push(Column::Categorical {
                    name: name.clone(),
                    levels,
                    other: width,
                });
                width += 1;
            }
        }
        Encoder { columns, width }
    }

    /// Number of encoded values per row.
    pub fn width(&self) -> usize {
        self.width
    }

    /// One row's encoding as (slot, value) pairs of its non-zero values; rows are sparse (one
    /// level per column), which keeps training linear in the number of rows.
    pub fn encode_sparse(&self, row: &BTreeMap<String, String>) -> Vec<(usize, f64)> {
        let mut out = vec![(0, 1.0)];
        let mut slot = 1;
        for c in &self.columns {
            match c {
                Column::Numeric { name, levels } => {
                    let raw = row.get(name).map(String::as_str).unwrap_or("").trim();
                    match raw.parse::<f64>() {
                        Ok(x) if x.is_finite() => out.push((slot, signed_log(x))),
                        _ => out.push((slot + 1, 1.0)),
                    }
                    if let Some(i) = levels.get(raw) {
                        out.push((*i, 1.0));
                    }
                    slot += 2 + levels.len();
                }
                Column::Categorical {
                    name,
                    levels,
                    other,
                } => {
                    let raw = row.get(name).map(String::as_str).unwrap_or("").trim();
                    out.push((*levels.get(raw).unwrap_or(other), 1.0));
                    slot += levels.len() + 1;
                }
            }
        }
        debug_assert_eq!(slot, self.width);
        out.retain(|(_, v)| *v != 0.0);
        out
    }

    /// One row's encoding, dense (length [`Encoder::width`]).
    pub fn encode_into(&self, row: &BTreeMap<String, String>, out: &mut [f64]) {
        out.fill(0.0);
        for (i, v) in self.encode_sparse(row) {
            out[i] = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn numbers_are_logged_and_categories_one_hot() {
        let rows: Vec<_> = (0..10)
            .map(|i| row(&[("steps", if i < 5 { "30" } else { "40" }), ("model", "M1")]))
            .chain([row(&[("steps", ""), ("model", "rare")])])
            .collect();
        let refs: Vec<&BTreeMap<String, String>> = rows.iter().collect();
        let e = Encoder::fit(&["steps".into(), "model".into()], &refs, 3);
        // constant + (value, missing, 30, 40) + (M1, other)
        assert_eq!(e.width(), 7);
        let mut out = vec![0.0; e.width()];
        e.encode_into(&row(&[("steps", "30"), ("model", "M1")]), &mut out);
        assert_eq!(out[0], 1.0);
        assert!((out[1] - 31f64.ln()).abs() < 1e-12);
        assert_eq!(out[2], 0.0);
        assert_eq!(out.iter().sum::<f64>() - out[1], 3.0, "{out:?}");
        e.encode_into(&row(&[("model", "never seen")]), &mut out);
        assert_eq!(out[2], 1.0, "missing flag");
        assert_eq!(out[6], 1.0, "unknown level goes to other");
    }
}
