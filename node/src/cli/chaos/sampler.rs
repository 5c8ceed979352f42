//! For soaks: every interval, each node's resident memory, open files and data dir size, and
//! the latency of the submits acknowledged in that interval (a submit returns once committed),
//! appended to `samples.csv`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::history::{Kind, Op, completed};
use super::workload::Shared;

/// The pid of the `testmesh node` whose command line names `data_dir`.
fn pid_of(data_dir: &Path) -> Option<u32> {
    let want = data_dir.to_string_lossy().to_string();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let is_node = args.iter().any(|a| *a == b"node");
        let here = args.contains(&want.as_bytes());
        // `ip netns exec` execs the node, so the pid is the node's either way.
        if is_node && here && !args.iter().any(|a| *a == b"netns") {
            return Some(pid);
        }
    }
    None
}

fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn dir_bytes(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Samples until the run stops.
pub async fn run(s: Arc<Shared>, data_dirs: Vec<PathBuf>, every: Duration, out: PathBuf) {
    let Ok(mut f) = std::fs::File::create(&out) else {
        return;
    };
    let _ = writeln!(
        f,
        "t_s,node,pid,rss_bytes,open_fds,data_dir_bytes,submits_ok,submit_ms_p50,submit_ms_p99"
    );
    let mut since = 0u64;
    while !s.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(every).await;
        let now = s.rec.elapsed_ms();
        let mut lat: Vec<u64> = completed(&s.rec.events())
            .into_iter()
            .filter(|c| c.kind == Kind::Ok && matches!(c.op, Op::Submit { .. }))
            .filter(|c| c.completed >= since && c.completed < now)
            .map(|c| c.completed - c.invoked)
            .collect();
        lat.sort_unstable();
        since = now;
        for (i, d) in data_dirs.iter().enumerate() {
            let pid = pid_of(d);
            let (r, n) = pid.map_or((0, 0), |p| (rss(p), fds(p)));
            let _ = writeln!(
                f,
                "{:.1},{i},{},{r},{n},{},{},{},{}",
                now as f64 / 1000.0,
                pid.unwrap_or(0),
                dir_bytes(d),
                lat.len(),
                quantile(&lat, 0.5),
                quantile(&lat, 0.99)
            );
        }
        let _ = f.flush();
    }
}
