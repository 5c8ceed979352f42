//! Which of the node's own environment variables a task sees: a fixed set every program expects
//! (locale, paths, who it runs as) and whatever `--pass-env` names. The rest — cloud
//! credentials above all — stays with the node.

/// Passed to every task: what programs need to behave normally, and nothing that grants access.
const ALWAYS: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "LC_*", "TZ", "TERM", "TMPDIR",
];

/// Whether `name` matches `pattern`: the exact name, or a prefix followed by `*`.
fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    }
}

/// The part of `node_env` that tasks get, in its order.
pub fn for_tasks(
    node_env: impl IntoIterator<Item = (String, String)>,
    pass: &[String],
) -> Vec<(String, String)> {
    node_env
        .into_iter()
        .filter(|(k, _)| ALWAYS.iter().any(|p| matches(p, k)) || pass.iter().any(|p| matches(p, k)))
        .collect()
}

/// Checks a `--pass-env` pattern: a variable name, or a prefix ending in `*`.
pub fn check_pattern(p: &str) -> Result<(), String> {
    let name = p.strip_suffix('*').unwrap_or(p);
    let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok || p == "*" {
        Ok(())
    } else {
        Err(format!(
            "--pass-env {p:?}: give a variable name (CUDA_HOME) or a prefix ending in * (NCCL_*)"
        ))
    }
}

/// Where `program` is found on `path` (a `PATH` value), when it is a bare name: the first
/// directory holding an executable file of that name. A name with a `/` is used as it is.
pub fn find_program(program: &str, path: Option<&str>) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if program.is_empty() || program.contains('/') {
        return None;
    }
    path?
        .split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_usual_variables_and_those_asked_for_reach_tasks() {
        let node: Vec<(String, String)> = [
            ("PATH", "/usr/bin"),
            ("LC_ALL", "C"),
            ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
            ("GOOGLE_APPLICATION_CREDENTIALS", "/k.json"),
            ("NCCL_DEBUG", "INFO"),
            ("CUDA_HOME", "/usr/local/cuda"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let names = |pass: &[&str]| -> Vec<String> {
            let pass: Vec<String> = pass.iter().map(|s| s.to_string()).collect();
            for_tasks(node.clone(), &pass)
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(names(&[]), ["PATH", "LC_ALL"]);
        assert_eq!(
            names(&["NCCL_*", "CUDA_HOME"]),
            ["PATH", "LC_ALL", "NCCL_DEBUG", "CUDA_HOME"]
        );
        assert_eq!(
            names(&["*"]).len(),
            node.len(),
            "* passes everything, as before"
        );
        assert!(check_pattern("NCCL_*").is_ok() && check_pattern("A-B").is_err());
        assert!(check_pattern("").is_err() && check_pattern("*").is_ok());
    }

    #[test]
    fn programs_are_found_on_the_tasks_path() {
        let sh = find_program("sh", Some("/nonexistent:/usr/bin:/bin")).unwrap();
        assert!(sh.ends_with("sh") && sh.is_absolute());
        assert_eq!(
            find_program("./x", Some("/bin")),
            None,
            "a path is used as given"
        );
        assert_eq!(
            find_program("surely-not-a-program", Some("/usr/bin:/bin")),
            None
        );
        assert_eq!(find_program("sh", None), None);
        assert_eq!(find_program("sh", Some("relative/dir")), None);
    }
}
