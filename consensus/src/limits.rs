//! Caps on everything a user or a task can put into the ledger. Each input is either refused
//! with a message that names the cap, or truncated with a visible marker, so that no single
//! task, report or log entry can grow the replicated state (or an entry) without bound.
//! The table in docs/api.md lists them; keep the two in step.

use crate::task::{Outcome, TaskSpec};

/// Most arguments of a command, and most bytes of all of them together.
pub const MAX_ARGS: usize = 4096;
pub const MAX_ARGV_BYTES: usize = 128 << 10;
/// Most environment variables of a task, and most bytes of all names and values together.
pub const MAX_ENV_VARS: usize = 256;
pub const MAX_ENV_BYTES: usize = 64 << 10;
/// Most labels of a task or worker, longest key and value.
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_KEY: usize = 128;
pub const MAX_LABEL_VALUE: usize = 256;
/// Longest working directory.
pub const MAX_WORKDIR: usize = 4096;
/// Longest request id (the API asks for at most 128 characters; the ledger allows some slack).
pub const MAX_REQUEST_ID: usize = 256;
/// Longest message of an attempt (why it ended); longer ones are cut with a marker.
pub const MAX_MESSAGE: usize = 2048;
/// Most bytes one log entry may carry: a submit above it is refused (the CLI splits its
/// submits below it) and the node's group commit never folds more than this into one entry.
/// Small enough that a follower on a slow link acknowledges an entry well inside Raft's
/// append deadline, and that one append of [`MAX_PAYLOAD_ENTRIES`] fits a mesh frame (64 MiB).
pub const MAX_ENTRY_BYTES: usize = 1 << 20;
/// Most entries in one Raft append.
pub const MAX_PAYLOAD_ENTRIES: u64 = 48;

/// About how many bytes a command takes in a log entry.
pub fn command_bytes(cmd: &crate::command::Command) -> usize {
    use crate::command::Command;
    match cmd {
        Command::Submit { tasks, .. } | Command::SubmitRun { tasks, .. } => {
            256 + tasks.iter().map(spec_bytes).sum::<usize>()
        }
        Command::TaskFinished { outcome, .. } => 64 + outcome_bytes(outcome),
        Command::Assign { assignments, .. } => 32 + assignments.len() * 48,
        Command::Archive { tasks, .. } => 32 + tasks.len() * 10,
        Command::GiveBack { attempts, .. } => 32 + attempts.len() * 14,
        Command::Batch(cmds) => cmds.iter().map(command_bytes).sum(),
        Command::RegisterWorker { .. } | Command::Scaling { .. } => 4096,
        _ => 128,
    }
}

fn check_map<'a, V: AsRef<str> + 'a>(
    what: &str,
    entries: impl ExactSizeIterator<Item = (&'a String, V)>,
    max_entries: usize,
    max_key: usize,
    max_value: usize,
    max_total: usize,
) -> Result<(), String> {
    if entries.len() > max_entries {
        return Err(format!(
            "{} {what} entries; at most {max_entries}",
            entries.len()
        ));
    }
    let mut total = 0;
    for (k, v) in entries {
        let v = v.as_ref();
        if k.is_empty() || k.len() > max_key {
            return Err(format!(
                "{what} key {:?}: keys need 1 to {max_key} bytes",
                cut(k, 64)
            ));
        }
        if v.len() > max_value {
            return Err(format!(
                "{what} {:?}: values are at most {max_value} bytes (this one has {})",
                cut(k, 64),
                v.len()
            ));
        }
        total += k.len() + v.len();
    }
    if total > max_total {
        return Err(format!(
            "{what} holds {total} bytes; at most {max_total} in all"
        ));
    }
    Ok(())
}

/// Checks a spec's sizes against the caps above.
pub fn check_spec(spec: &TaskSpec) -> Result<(), String> {
    if spec.argv.len() > MAX_ARGS {
        return Err(format!(
            "the command has {} arguments; at most {MAX_ARGS}",
            spec.argv.len()
        ));
    }
    let argv: usize = spec.argv.iter().map(String::len).sum();
    if argv > MAX_ARGV_BYTES {
        return Err(format!(
            "the command is {argv} bytes long; at most {MAX_ARGV_BYTES} (pass large input in a file)"
        ));
    }
    check_map(
        "env",
        spec.env.iter(),
        MAX_ENV_VARS,
        MAX_ENV_BYTES,
        MAX_ENV_BYTES,
        MAX_ENV_BYTES,
    )?;
    check_map(
        "secret_env",
        spec.secret_env.iter().map(|(k, v)| (k, v.expose())),
        MAX_ENV_VARS,
        MAX_ENV_BYTES,
        MAX_ENV_BYTES,
        MAX_ENV_BYTES,
    )?;
    if let Some(k) = spec.secret_env.keys().find(|k| spec.env.contains_key(*k)) {
        return Err(format!(
            "{k} is in both env and secret_env; give it in one of them"
        ));
    }
    check_labels(&spec.labels)?;
    check_map(
        "constraint",
        spec.requirements.constraints.iter(),
        MAX_LABELS,
        MAX_LABEL_KEY,
        MAX_LABEL_VALUE,
        MAX_LABELS * (MAX_LABEL_KEY + MAX_LABEL_VALUE),
    )?;
    if spec
        .requirements
        .gpu_model
        .as_ref()
        .is_some_and(|m| m.len() > MAX_LABEL_VALUE)
    {
        return Err(format!(
            "the GPU model is longer than {MAX_LABEL_VALUE} bytes"
        ));
    }
    if spec.workdir.as_ref().is_some_and(|w| w.len() > MAX_WORKDIR) {
        return Err(format!("the workdir is longer than {MAX_WORKDIR} bytes"));
    }
    crate::suite::check(spec)
}

/// Checks labels (of a task or a worker) against the caps above.
pub fn check_labels(labels: &std::collections::BTreeMap<String, String>) -> Result<(), String> {
    check_map(
        "label",
        labels.iter(),
        MAX_LABELS,
        MAX_LABEL_KEY,
        MAX_LABEL_VALUE,
        MAX_LABELS * (MAX_LABEL_KEY + MAX_LABEL_VALUE),
    )
}

/// About how many bytes a spec takes in a log entry (its strings plus a fixed overhead); cheap,
/// so the group commit can bound an entry without encoding it twice.
pub fn spec_bytes(spec: &TaskSpec) -> usize {
    let strings = |m: &std::collections::BTreeMap<String, String>| -> usize {
        m.iter().map(|(k, v)| k.len() + v.len() + 2).sum()
    };
    64 + spec.name.len()
        + spec.argv.iter().map(|a| a.len() + 1).sum::<usize>()
        + strings(&spec.env)
        + spec
            .secret_env
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum::<usize>()
        + strings(&spec.labels)
        + strings(&spec.requirements.constraints)
        + spec.requirements.gpu_model.as_ref().map_or(0, String::len)
        + spec.workdir.as_ref().map_or(0, String::len)
        + spec.suite().code.as_ref().map_or(0, |c| 80 + c.hash.len())
        + spec
            .suite()
            .files
            .iter()
            .map(|f| 8 + f.path.len() + f.content.len())
            .sum::<usize>()
        + spec
            .suite()
            .artifacts
            .iter()
            .map(|g| 4 + g.len())
            .sum::<usize>()
        + spec.suite().junit_from.as_ref().map_or(0, String::len)
}

/// About how many bytes an outcome takes in a log entry.
pub fn outcome_bytes(o: &Outcome) -> usize {
    64 + o.message.as_ref().map_or(0, String::len)
        + o.stdout_tail.len()
        + o.stderr_tail.len()
        + o.metrics
            .iter()
            .map(|m| 16 + m.name.len() + m.unit.len())
            .sum::<usize>()
        + o.artifacts()
            .iter()
            .map(|a| 12 + a.path.len())
            .sum::<usize>()
        + o.tests()
            .iter()
            .map(|t| {
                24 + t.classname.len() + t.name.len() + t.message.as_ref().map_or(0, String::len)
            })
            .sum::<usize>()
}

/// `s` cut to at most `max` bytes (at a character boundary), with a marker saying how much
/// was dropped.
pub fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [{} more bytes]", &s[..end], s.len() - end)
}

impl Outcome {
    /// Brings an outcome within the caps: message, tails and metrics. Deterministic, so the
    /// ledger applies it too whatever a worker sends.
    pub fn clamp(&mut self) {
        use crate::task::{MAX_METRICS, TAIL_BYTES};
        if let Some(m) = &mut self.message
            && m.len() > MAX_MESSAGE
        {
            *m = cut(m, MAX_MESSAGE);
        }
        for tail in [&mut self.stdout_tail, &mut self.stderr_tail] {
            if tail.len() > TAIL_BYTES {
                // Keep the end: that is what a tail is for.
                let mut start = tail.len() - TAIL_BYTES;
                while !tail.is_char_boundary(start) {
                    start += 1;
                }
                *tail = tail[start..].to_string();
            }
        }
        self.metrics.truncate(MAX_METRICS);
        self.metrics
            .retain(|m| m.name.len() <= 128 && m.unit.len() <= 32 && m.value.is_finite());
        if let Some(k) = &mut self.kept {
            crate::suite::clamp(&mut k.artifacts, &mut k.tests);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{BenchMetric, TAIL_BYTES, TaskState};

    #[test]
    fn over_long_inputs_are_refused_with_the_cap_named() {
        let mut spec = TaskSpec {
            argv: vec!["x".repeat(MAX_ARGV_BYTES + 1)],
            ..Default::default()
        };
        assert!(check_spec(&spec).unwrap_err().contains("at most"));
        spec.argv = vec!["true".into(); MAX_ARGS + 1];
        assert!(check_spec(&spec).unwrap_err().contains("arguments"));
        spec.argv = vec!["true".into()];
        spec.env.insert("K".into(), "v".repeat(MAX_ENV_BYTES + 1));
        assert!(check_spec(&spec).unwrap_err().contains("env"));
        spec.env.clear();
        for i in 0..=MAX_LABELS {
            spec.labels.insert(format!("k{i}"), "v".into());
        }
        assert!(check_spec(&spec).unwrap_err().contains("label"));
        spec.labels.clear();
        spec.labels
            .insert("k".into(), "v".repeat(MAX_LABEL_VALUE + 1));
        assert!(check_spec(&spec).unwrap_err().contains("label"));
        spec.labels.clear();
        assert!(check_spec(&spec).is_ok());
    }

    #[test]
    fn an_outcome_is_cut_to_its_caps_with_a_marker() {
        let mut o = Outcome {
            message: Some("é".repeat(MAX_MESSAGE)),
            stdout_tail: "a".repeat(10 * TAIL_BYTES) + "END",
            metrics: (0..500)
                .map(|i| BenchMetric {
                    name: format!("m{i}"),
                    value: 1.0,
                    unit: String::new(),
                })
                .collect(),
            ..Outcome::bare(TaskState::Failed)
        };
        o.clamp();
        let m = o.message.as_deref().unwrap();
        assert!(
            m.len() <= MAX_MESSAGE + 40 && m.contains("more bytes]"),
            "{m}"
        );
        assert!(o.stdout_tail.len() <= TAIL_BYTES && o.stdout_tail.ends_with("END"));
        assert_eq!(o.metrics.len(), crate::task::MAX_METRICS);
        assert!(outcome_bytes(&o) < 64 << 10);
    }
}
