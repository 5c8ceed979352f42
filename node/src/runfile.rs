//! Run files (`testmesh run --file run.toml`) and sharding: a task template expanded over a
//! matrix of parameters and shards into the tasks of one run. Pure: text in, task requests or
//! an error that names the line and the field out.
//!
//! ```toml
//! name = "nightly-bench"
//! max_tasks = 500                      # refuse a bigger expansion (default 1000)
//! [metadata]
//! commit = "abc123"
//! [matrix]
//! model = ["resnet50", "bert"]
//! batch = [16, 32]
//! [[exclude]]
//! model = "bert"
//! batch = 32
//! [task]
//! name = "{model}-b{batch}"
//! command = ["python", "bench.py", "--model", "{model}", "--batch", "{batch}"]
//! gpus = 1
//! shards = 1                           # optional: split each cell into N shards
//! ```
//!
//! Placeholders: every matrix parameter, `{shard}` (0-based), `{shard1}` (1-based), `{shards}`
//! and `{index}` (the task's place in the run); `{{` and `}}` stand for braces.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::core::submit::{TaskRequest, to_spec};

/// Label of the shards of a timing split.
pub const SPLIT_LABEL: &str = testmesh_planner::quarantine::SPLIT_LABEL;

/// Where a shard's test list is written, relative to the task's directory (`{tests_file}`).
pub const TESTS_FILE: &str = ".testmesh/tests.txt";

/// Default cap on the tasks one run file may expand to.
pub const DEFAULT_MAX_TASKS: usize = 1000;
/// The most any run may have (one ledger command).
pub const HARD_MAX_TASKS: usize = testmesh_consensus::command::MAX_SUBMIT_BATCH;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunFile {
    name: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    max_tasks: Option<usize>,
    /// A directory to ship with the run (relative to the run file), as `--workdir` does.
    workdir: Option<String>,
    #[serde(default)]
    matrix: BTreeMap<String, Vec<toml::Value>>,
    #[serde(default)]
    exclude: Vec<BTreeMap<String, toml::Value>>,
    task: toml::Spanned<toml::Table>,
}

/// A run ready to submit.
#[derive(Debug, Clone)]
pub struct RunPlan {
    pub name: String,
    pub metadata: BTreeMap<String, String>,
    pub tasks: Vec<TaskRequest>,
    /// The run file's `workdir`: the tree to ship.
    pub ship: Option<String>,
}

fn line_of(src: &str, offset: usize) -> usize {
    src[..offset.min(src.len())].matches('\n').count() + 1
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Replaces `{name}` by its value; `Err(name)` for a placeholder nobody defines.
pub fn fill(template: &str, values: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if tail.starts_with('}') {
            return Err("}".into());
        }
        let Some(end) = tail.find('}') else {
            return Err(tail.to_string());
        };
        let key = &tail[1..end];
        match values.get(key) {
            Some(v) => out.push_str(v),
            None => return Err(key.to_string()),
        }
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Every string in `v` filled in; the error names the field and the placeholder.
fn fill_value(
    v: &toml::Value,
    values: &BTreeMap<String, String>,
    path: &str,
) -> Result<toml::Value, (String, String)> {
    Ok(match v {
        toml::Value::String(s) => {
            toml::Value::String(fill(s, values).map_err(|p| (path.to_string(), p))?)
        }
        toml::Value::Array(a) => toml::Value::Array(
            a.iter()
                .enumerate()
                .map(|(i, x)| fill_value(x, values, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        toml::Value::Table(t) => toml::Value::Table(
            t.iter()
                .map(|(k, x)| {
                    Ok::<_, (String, String)>((
                        k.clone(),
                        fill_value(x, values, &format!("{path}.{k}"))?,
                    ))
                })
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}

/// Parses and expands a run file; errors say where (line) and what (field) to fix.
pub fn parse(src: &str, file: &str) -> Result<RunPlan, String> {
    let f: RunFile = toml::from_str(src).map_err(|e| format!("{file}: {e}"))?;
    let task_line = line_of(src, f.task.span().start);
    let at = |field: &str, what: String| format!("{file}, line {task_line}, {field}: {what}");
    let cap = f.max_tasks.unwrap_or(DEFAULT_MAX_TASKS);
    if cap == 0 || cap > HARD_MAX_TASKS {
        return Err(format!(
            "{file}: max_tasks must be between 1 and {HARD_MAX_TASKS}"
        ));
    }
    let mut template = f.task.into_inner();
    let shards = match template.remove("shards") {
        None => 1,
        Some(toml::Value::Integer(n)) if (1..=HARD_MAX_TASKS as i64).contains(&n) => n as usize,
        Some(other) => {
            return Err(at(
                "task.shards",
                format!(
                    "{other} is not a shard count; write a whole number from 1 to {HARD_MAX_TASKS}"
                ),
            ));
        }
    };
    // The matrix: each parameter a non-empty list of plain values.
    let mut params: Vec<(String, Vec<String>)> = Vec::new();
    for (k, vs) in &f.matrix {
        if ["shard", "shard1", "shards", "index"].contains(&k.as_str()) {
            return Err(format!(
                "{file}: matrix.{k}: {k} is a built-in placeholder; rename the parameter"
            ));
        }
        if vs.is_empty() {
            return Err(format!(
                "{file}: matrix.{k} is empty; give it at least one value"
            ));
        }
        let vals = vs
            .iter()
            .map(|v| {
                scalar(v).ok_or_else(|| {
                    format!("{file}: matrix.{k}: {v} is not a string, number or boolean")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        params.push((k.clone(), vals));
    }
    for (i, ex) in f.exclude.iter().enumerate() {
        if let Some(k) = ex.keys().find(|k| !f.matrix.contains_key(*k)) {
            return Err(format!(
                "{file}: exclude #{}: {k:?} is not a matrix parameter",
                i + 1
            ));
        }
    }
    let excluded = |cell: &BTreeMap<String, String>| {
        f.exclude.iter().any(|ex| {
            ex.iter()
                .all(|(k, v)| scalar(v).is_some_and(|v| cell.get(k) == Some(&v)))
        })
    };
    // Cartesian product, in parameter order.
    let mut cells: Vec<BTreeMap<String, String>> = vec![BTreeMap::new()];
    for (k, vals) in &params {
        cells = cells
            .into_iter()
            .flat_map(|c| {
                vals.iter().map(move |v| {
                    let mut c = c.clone();
                    c.insert(k.clone(), v.clone());
                    c
                })
            })
            .collect();
        if cells.len() * shards > HARD_MAX_TASKS * 4 {
            break; // far over any cap already; the count below says by how much
        }
    }
    cells.retain(|c| !excluded(c));
    let total: usize = params.iter().map(|(_, v)| v.len()).product::<usize>() * shards;
    let count = cells.len() * shards;
    if count > cap {
        let sizes: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{} {k}", v.len()))
            .chain((shards > 1).then(|| format!("{shards} shards")))
            .collect();
        return Err(format!(
            "{file}: the matrix expands to {count} tasks ({}{}); the cap is {cap} — raise max_tasks (at most {HARD_MAX_TASKS}) or shrink the matrix",
            sizes.join(" × "),
            if total != count {
                format!(", {total} before exclusions")
            } else {
                String::new()
            }
        ));
    }
    if count == 0 {
        return Err(format!(
            "{file}: every cell of the matrix is excluded; nothing to run"
        ));
    }
    let mut tasks = Vec::with_capacity(count);
    for cell in &cells {
        for shard in 0..shards {
            let mut values = cell.clone();
            values.insert("shard".into(), shard.to_string());
            values.insert("shard1".into(), (shard + 1).to_string());
            values.insert("shards".into(), shards.to_string());
            values.insert("index".into(), tasks.len().to_string());
            let filled = fill_value(&toml::Value::Table(template.clone()), &values, "task")
                .map_err(|(field, p)| {
                    let known: Vec<String> = values.keys().map(|k| format!("{{{k}}}")).collect();
                    let line = src
                        .find(&format!("{{{p}}}"))
                        .map_or(task_line, |o| line_of(src, o));
                    format!(
                        "{file}, line {line}, {field}: unknown placeholder {{{p}}}; known: {} (write {{{{ for a brace)",
                        known.join(", ")
                    )
                })?;
            let mut req: TaskRequest = filled
                .try_into()
                .map_err(|e: toml::de::Error| at("task", e.message().to_string()))?;
            if req.name.is_empty() {
                let mut n = f.name.clone();
                for (k, v) in cell {
                    n.push_str(&format!(" {k}={v}"));
                }
                if shards > 1 {
                    n.push_str(&format!(" shard {}/{shards}", shard + 1));
                }
                req.name = n;
            }
            for (k, v) in cell {
                req.labels.entry(format!("matrix.{k}")).or_insert(v.clone());
            }
            if shards > 1 {
                shard_env(&mut req, shard, shards);
            }
            to_spec(&req).map_err(|e| at("task", format!("task {:?}: {e}", req.name)))?;
            tasks.push(req);
        }
    }
    Ok(RunPlan {
        name: f.name,
        metadata: f.metadata,
        tasks,
        ship: f.workdir,
    })
}

fn shard_env(req: &mut TaskRequest, shard: usize, shards: usize) {
    req.env
        .insert("TESTMESH_SHARD_INDEX".into(), shard.to_string());
    req.env
        .insert("TESTMESH_SHARD_COUNT".into(), shards.to_string());
    req.labels
        .insert("shard".into(), format!("{}/{shards}", shard + 1));
}

/// `testmesh run --shards N -- CMD`: one task per shard, placeholders filled in each argument.
///
/// With `lists` (a timing split), shard i gets `lists[i]` as the file `{tests_file}` names, one
/// test id per line; without, `{tests_file}` is an error.
pub fn shards(
    base: &TaskRequest,
    shards: usize,
    lists: Option<&[Vec<String>]>,
) -> Result<Vec<TaskRequest>, String> {
    if shards == 0 {
        return Err("--shards must be at least 1 (0 shards would run nothing)".into());
    }
    if shards > HARD_MAX_TASKS {
        return Err(format!("--shards {shards}: at most {HARD_MAX_TASKS}"));
    }
    (0..shards)
        .map(|shard| {
            let values: BTreeMap<String, String> = [
                ("shard", shard.to_string()),
                ("shard1", (shard + 1).to_string()),
                ("shards", shards.to_string()),
                ("index", shard.to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .chain(lists.map(|_| ("tests_file".to_string(), TESTS_FILE.to_string())))
            .collect();
            let mut req = base.clone();
            if let Some(lists) = lists {
                // A shard's tests change from run to run: its result says nothing of its
                // worker next to other workers' runs of the "same" shard (see quarantine).
                req.labels
                    .insert(SPLIT_LABEL.to_string(), "timings".to_string());
                let list = lists.get(shard).map(|l| l.join("\n") + "\n").unwrap_or_default();
                req.files.insert(TESTS_FILE.to_string(), list);
                req.env
                    .insert("TESTMESH_TESTS_FILE".into(), TESTS_FILE.to_string());
            }
            req.command = base
                .command
                .iter()
                .map(|a| {
                    fill(a, &values).map_err(|p| {
                        format!(
                            "{a:?}: unknown placeholder {{{p}}}; known: {{shard}} (0-based), {{shard1}} (1-based), {{shards}}, {{index}}, and {{tests_file}} with --split-by timings (write {{{{ for a brace)"
                        )
                    })
                })
                .collect::<Result<_, _>>()?;
            if req.name.is_empty() {
                req.name = testmesh_consensus::history::program_of(&base.command);
            }
            req.name = format!("{} shard {}/{shards}", req.name, shard + 1);
            shard_env(&mut req, shard, shards);
            to_spec(&req).map_err(|e| e.0)?;
            Ok(req)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
name = "bench"
[metadata]
commit = "abc"
[matrix]
model = ["resnet", "bert"]
batch = [16, 32]
[[exclude]]
model = "bert"
batch = 32
[task]
name = "{model}-b{batch}"
command = ["python", "bench.py", "--model", "{model}", "--batch", "{batch}"]
cpu = "500m"
env = { BATCH = "{batch}" }
"#;

    #[test]
    fn a_matrix_expands_without_the_excluded_cells() {
        let p = parse(FILE, "run.toml").unwrap();
        let names: Vec<&str> = p.tasks.iter().map(|t| t.name.as_str()).collect();
        // Parameters vary in name order (batch, then model), each in the order written.
        assert_eq!(names, ["resnet-b16", "bert-b16", "resnet-b32"]);
        assert_eq!(p.tasks[2].command[5], "32");
        assert_eq!(p.tasks[2].env["BATCH"], "32");
        assert_eq!(p.tasks[2].labels["matrix.model"], "resnet");
        assert_eq!(p.metadata["commit"], "abc");
    }

    #[test]
    fn shards_fill_placeholders_and_the_environment() {
        let f = FILE
            .replace("cpu = \"500m\"", "cpu = \"500m\"\nshards = 2")
            .replace(
                "\"{batch}\"]",
                "\"{batch}\", \"--part\", \"{shard1}/{shards}\"]",
            );
        let p = parse(&f, "run.toml").unwrap();
        assert_eq!(p.tasks.len(), 6);
        assert_eq!(p.tasks[1].command[7], "2/2");
        assert_eq!(p.tasks[1].env["TESTMESH_SHARD_INDEX"], "1");
        let base = TaskRequest {
            command: vec![
                "pytest".into(),
                "--shard-id={shard}".into(),
                "--num-shards={shards}".into(),
            ],
            ..Default::default()
        };
        let t = shards(&base, 3, None).unwrap();
        assert_eq!(t[2].command, ["pytest", "--shard-id=2", "--num-shards=3"]);
        assert_eq!(t[2].env["TESTMESH_SHARD_COUNT"], "3");
        assert!(shards(&base, 0, None).unwrap_err().contains("at least 1"));
        let bad = TaskRequest {
            command: vec!["x".into(), "{shrad}".into()],
            ..Default::default()
        };
        assert!(
            shards(&bad, 2, None)
                .unwrap_err()
                .contains("unknown placeholder {shrad}")
        );
    }

    #[test]
    fn bad_files_name_the_line_and_the_field() {
        let e = parse(&FILE.replace("{batch}\"]", "{btach}\"]"), "run.toml").unwrap_err();
        assert!(
            e.contains("line 13") && e.contains("task.command[5]") && e.contains("{btach}"),
            "{e}"
        );
        let e = parse(
            &FILE.replace("cpu = \"500m\"", "cpu = \"lots\""),
            "run.toml",
        )
        .unwrap_err();
        assert!(e.contains("line 11") && e.contains("cpu"), "{e}");
        let e = parse(&FILE.replace("[task]", "[task]\ncpux = 1"), "run.toml").unwrap_err();
        assert!(e.contains("cpux"), "{e}");
        let e = parse(&FILE.replace("name = \"bench\"", "name = 3"), "run.toml").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn an_absurd_matrix_is_refused_with_its_count() {
        let f = r#"
name = "big"
[matrix]
a = [1,2,3,4,5,6,7,8,9,10]
b = [1,2,3,4,5,6,7,8,9,10]
c = [1,2,3,4,5,6,7,8,9,10,11]
[task]
command = ["true"]
"#;
        let e = parse(f, "run.toml").unwrap_err();
        assert!(
            e.contains("1100 tasks") && e.contains("10 a × 10 b × 11 c") && e.contains("1000"),
            "{e}"
        );
        assert!(
            parse(
                &f.replace("name = \"big\"", "name = \"big\"\nmax_tasks = 2000"),
                "f"
            )
            .is_ok()
        );
    }
}
