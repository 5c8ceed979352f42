//! Splitting a test suite into shards by past durations: longest-processing-time first (each
//! test, longest first, goes to the shard with the least predicted time so far), the rule
//! CircleCI's `--split-by=timings` and Buildkite's splitter use. Static rather than a dynamic
//! queue: each shard is one ordinary task (retries, placement, results unchanged), and LPT is
//! within 4/3 of the best split — far closer in practice when tests are many and short.
//!
//! Tests without history get an estimate (the median of the known ones, or one second when
//! nothing is known) and are counted, so the fallback is reported, never silent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Estimate for a test when no test has any history.
pub const DEFAULT_ESTIMATE_MS: u64 = 1000;

/// The shards and what the split predicts of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Split {
    /// Test ids per shard, in the order given (collection order), so each shard runs its tests
    /// in the order the suite would.
    pub shards: Vec<Vec<String>>,
    /// Predicted milliseconds per shard.
    pub predicted_ms: Vec<u64>,
    /// Tests that had no recorded duration, and the estimate each was given.
    pub estimated: usize,
    pub estimate_ms: u64,
}

impl Split {
    /// Slowest shard over the mean (1.0: perfectly even).
    pub fn balance(&self) -> f64 {
        balance(&self.predicted_ms)
    }
}

/// Slowest over mean of shard times; 1.0 when all are zero or there are none.
pub fn balance(times_ms: &[u64]) -> f64 {
    if times_ms.is_empty() {
        return 1.0;
    }
    let max = *times_ms.iter().max().unwrap_or(&0) as f64;
    let mean = times_ms.iter().sum::<u64>() as f64 / times_ms.len() as f64;
    if mean == 0.0 { 1.0 } else { max / mean }
}

/// Splits `tests` (ids in collection order; `key` maps an id to its key in `durations`) into
/// `shards` shards. Deterministic: ties go to the lower shard, equal durations keep
/// collection order.
pub fn by_timings(
    tests: &[String],
    durations: &BTreeMap<String, u64>,
    key: impl Fn(&str) -> String,
    shards: usize,
) -> Split {
    let shards = shards.max(1);
    let mut known: Vec<u64> = Vec::new();
    let times: Vec<Option<u64>> = tests
        .iter()
        .map(|t| {
            let d = durations.get(&key(t)).copied();
            known.extend(d);
            d
        })
        .collect();
    known.sort_unstable();
    let estimate_ms = if known.is_empty() {
        DEFAULT_ESTIMATE_MS
    } else {
        known[known.len() / 2]
    };
    let estimated = times.iter().filter(|t| t.is_none()).count();
    // A test that took 0 ms still costs its setup: count at least 1 ms.
    let cost = |i: usize| times[i].unwrap_or(estimate_ms).max(1);
    let mut order: Vec<usize> = (0..tests.len()).collect();
    order.sort_by(|&a, &b| cost(b).cmp(&cost(a)).then(a.cmp(&b)));
    let mut load = vec![0u64; shards];
    let mut owner = vec![0usize; tests.len()];
    for i in order {
        let s = (0..shards)
            .min_by_key(|&s| (load[s], s))
            .expect("at least one shard");
        load[s] += cost(i);
        owner[i] = s;
    }
    let mut out = vec![Vec::new(); shards];
    for (i, t) in tests.iter().enumerate() {
        out[owner[i]].push(t.clone());
    }
    Split {
        shards: out,
        predicted_ms: load,
        estimated,
        estimate_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("t{i}")).collect()
    }

    #[test]
    fn one_long_test_and_many_short_ones_balance() {
        let tests = ids(31);
        let mut d = BTreeMap::new();
        d.insert("t0".to_string(), 30_000);
        for i in 1..31 {
            d.insert(format!("t{i}"), 2_000);
        }
        let s = by_timings(&tests, &d, str::to_string, 3);
        assert_eq!(s.shards.iter().map(Vec::len).sum::<usize>(), 31);
        assert_eq!(s.estimated, 0);
        assert!(s.balance() < 1.05, "{:?}", s.predicted_ms);
        // Each shard keeps collection order.
        for sh in &s.shards {
            let mut sorted = sh.clone();
            sorted.sort_by_key(|t| t[1..].parse::<usize>().unwrap());
            assert_eq!(&sorted, sh);
        }
    }

    #[test]
    fn unknown_tests_get_the_median_and_are_counted() {
        let tests = ids(4);
        let d: BTreeMap<String, u64> = [("t0".to_string(), 100), ("t1".to_string(), 300)].into();
        let s = by_timings(&tests, &d, str::to_string, 2);
        assert_eq!(s.estimated, 2);
        assert_eq!(s.estimate_ms, 300);
        let none = by_timings(&tests, &BTreeMap::new(), str::to_string, 2);
        assert_eq!((none.estimated, none.estimate_ms), (4, DEFAULT_ESTIMATE_MS));
        assert_eq!(none.predicted_ms, vec![2000, 2000]);
    }

    #[test]
    fn more_shards_than_tests_leaves_some_empty_and_is_deterministic() {
        let tests = ids(2);
        let a = by_timings(&tests, &BTreeMap::new(), str::to_string, 4);
        assert_eq!(a, by_timings(&tests, &BTreeMap::new(), str::to_string, 4));
        assert_eq!(a.shards.iter().filter(|s| s.is_empty()).count(), 2);
    }
}
