//! `GET /metrics`: the node's view of the cluster in Prometheus' text format (OpenMetrics),
//! encoded by prometheus-client from a registry built per scrape out of the replica, the gossip
//! statistics and Raft's metrics — nothing is double-counted and nothing goes stale. Names follow
//! node_exporter's and DCGM's habits (`_bytes`, `_ratio`, `_celsius`, `_watts`, `_total`).

use std::sync::atomic::AtomicU64;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use testmesh_consensus::scaling::DecisionKind;
use testmesh_consensus::task::TaskState;

use super::AppState;
use super::error::ApiError;

type F64 = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeL {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GpuL {
    node: String,
    gpu: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerL {
    worker: String,
    hostname: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateL {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindL {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceL {
    provider: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderL {
    provider: String,
}

fn family<L, M>(r: &mut Registry, name: &str, help: &str) -> Family<L, M>
where
    Family<L, M>: Default + Clone + prometheus_client::registry::Metric,
{
    let f = Family::<L, M>::default();
    r.register(name, help, f.clone());
    f
}

fn gauge(r: &mut Registry, name: &str, help: &str, v: f64) {
    let g = F64::default();
    g.set(v);
    r.register(name, help, g);
}

fn counter(r: &mut Registry, name: &str, help: &str, v: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(v);
    r.register(name, help, c);
}

/// The whole exposition as text; `latest` is every node's latest gossiped point.
pub fn render(
    st: &AppState,
    latest: &std::collections::HashMap<testmesh_consensus::NodeId, crate::stats::Point>,
) -> Result<String, std::fmt::Error> {
    let mut r = Registry::default();

    // Raft, as this node sees it.
    let m = st.core.leadership.metrics();
    gauge(
        &mut r,
        "testmesh_raft_term",
        "Current Raft term",
        m.current_term as f64,
    );
    gauge(
        &mut r,
        "testmesh_raft_is_leader",
        "1 when this node leads the cluster",
        f64::from(u8::from(m.current_leader == Some(st.core.node))),
    );
    gauge(
        &mut r,
        "testmesh_raft_leader_known",
        "1 when this node knows a leader",
        f64::from(u8::from(m.current_leader.is_some())),
    );
    gauge(
        &mut r,
        "testmesh_raft_last_log_index",
        "Index of the last Raft log entry here",
        m.last_log_index.unwrap_or(0) as f64,
    );
    gauge(
        &mut r,
        "testmesh_raft_applied_index",
        "Index of the last entry applied to this replica (commit index as applied)",
        m.last_applied.map_or(0, |l| l.index) as f64,
    );
    let membership = m.membership_config.membership();
    gauge(
        &mut r,
        "testmesh_raft_voters",
        "Raft voters",
        membership.voter_ids().count() as f64,
    );
    gauge(
        &mut r,
        "testmesh_raft_learners",
        "Raft learners",
        membership.learner_ids().count() as f64,
    );

    // The data dir and retention.
    let d = st.core.disk.view();
    for (name, help, v) in [
        (
            "testmesh_data_dir_bytes",
            "Bytes under this node's data dir",
            d.data_dir_bytes,
        ),
        (
            "testmesh_ledger_file_bytes",
            "Size of the ledger file (log, snapshot, archive)",
            d.ledger_bytes,
        ),
        (
            "testmesh_task_log_bytes",
            "Bytes of task output kept by this node",
            d.logs_bytes,
        ),
        (
            "testmesh_disk_free_bytes",
            "Free space of the data dir's file system",
            d.free_bytes,
        ),
        (
            "testmesh_disk_min_free_bytes",
            "Below this free space new tasks are refused",
            d.min_free_bytes,
        ),
        (
            "testmesh_snapshot_bytes",
            "Size of the last Raft snapshot built or installed here",
            d.snapshot_bytes,
        ),
        (
            "testmesh_code_fetched_bytes",
            "Bytes of shipped working trees this node fetched from others since it started",
            st.core
                .code
                .fetched_bytes
                .load(std::sync::atomic::Ordering::Relaxed),
        ),
        (
            "testmesh_archived_tasks",
            "Finished tasks in this node's archive",
            d.archived_tasks,
        ),
        (
            "testmesh_live_tasks",
            "Tasks in the live replicated ledger",
            st.core.ledger.read().task_count() as u64,
        ),
    ] {
        gauge(&mut r, name, help, v as f64);
    }

    // Host statistics from gossip (every node's latest sample).
    let cpu: Family<NodeL, F64> = family(
        &mut r,
        "testmesh_node_cpu_usage_ratio",
        "CPU in use on the host, 0-1",
    );
    let mem_used: Family<NodeL, F64> = family(
        &mut r,
        "testmesh_node_memory_used_bytes",
        "Memory in use on the host",
    );
    let mem_total: Family<NodeL, F64> = family(
        &mut r,
        "testmesh_node_memory_total_bytes",
        "Memory of the host",
    );
    let load: Family<NodeL, F64> = family(&mut r, "testmesh_node_load1", "1-minute load average");
    let running: Family<NodeL, F64> = family(
        &mut r,
        "testmesh_node_running_tasks",
        "Tasks running on the node",
    );
    let gpu_util: Family<GpuL, F64> = family(
        &mut r,
        "testmesh_gpu_utilization_ratio",
        "GPU busy share, 0-1 (DCGM_FI_DEV_GPU_UTIL / 100)",
    );
    let gpu_used: Family<GpuL, F64> = family(
        &mut r,
        "testmesh_gpu_memory_used_bytes",
        "GPU memory in use",
    );
    let gpu_total: Family<GpuL, F64> =
        family(&mut r, "testmesh_gpu_memory_total_bytes", "GPU memory");
    let gpu_temp: Family<GpuL, F64> = family(
        &mut r,
        "testmesh_gpu_temperature_celsius",
        "GPU temperature",
    );
    let gpu_power: Family<GpuL, F64> = family(&mut r, "testmesh_gpu_power_watts", "GPU power draw");
    let gpu_foreign: Family<GpuL, F64> = family(
        &mut r,
        "testmesh_gpu_foreign_processes",
        "Compute processes on the GPU that testmesh did not start",
    );
    let ledger = st.core.ledger.read();
    let models: std::collections::BTreeMap<(String, u32), String> = ledger
        .workers()
        .flat_map(|w| {
            w.capacity
                .gpus
                .iter()
                .map(move |g| ((w.id.to_string(), g.index), g.model.clone()))
        })
        .collect();
    {
        for (id, p) in latest {
            let l = NodeL {
                node: id.to_string(),
            };
            let s = &p.sample;
            cpu.get_or_create(&l).set(s.cpu_percent as f64 / 100.0);
            mem_used.get_or_create(&l).set(s.memory_used.0 as f64);
            mem_total.get_or_create(&l).set(s.memory_total.0 as f64);
            load.get_or_create(&l).set(s.load_1m);
            running.get_or_create(&l).set(p.running_tasks as f64);
            for g in &s.gpus {
                let gl = GpuL {
                    node: id.to_string(),
                    gpu: g.index.to_string(),
                    model: models
                        .get(&(id.to_string(), g.index))
                        .cloned()
                        .unwrap_or_default(),
                };
                gpu_util
                    .get_or_create(&gl)
                    .set(g.utilization_percent as f64 / 100.0);
                gpu_used.get_or_create(&gl).set(g.memory_used.0 as f64);
                gpu_total.get_or_create(&gl).set(g.memory_total.0 as f64);
                gpu_temp.get_or_create(&gl).set(g.temperature_c as f64);
                gpu_power.get_or_create(&gl).set(g.power_mw as f64 / 1000.0);
                gpu_foreign
                    .get_or_create(&gl)
                    .set(g.foreign_processes as f64);
            }
        }
    }

    // Workers: offered and reserved.
    let cap_cpu: Family<WorkerL, F64> = family(
        &mut r,
        "testmesh_worker_cpu_cores",
        "CPU cores a worker offers",
    );
    let res_cpu: Family<WorkerL, F64> = family(
        &mut r,
        "testmesh_worker_cpu_reserved_cores",
        "CPU cores reserved by tasks",
    );
    let cap_mem: Family<WorkerL, F64> = family(
        &mut r,
        "testmesh_worker_memory_bytes",
        "Memory a worker offers",
    );
    let res_mem: Family<WorkerL, F64> = family(
        &mut r,
        "testmesh_worker_memory_reserved_bytes",
        "Memory reserved by tasks",
    );
    let cap_gpu: Family<WorkerL, F64> =
        family(&mut r, "testmesh_worker_gpus", "GPUs a worker offers");
    let res_gpu: Family<WorkerL, F64> = family(
        &mut r,
        "testmesh_worker_gpus_reserved",
        "GPUs with a reservation",
    );
    for w in ledger.workers() {
        let l = WorkerL {
            worker: w.id.to_string(),
            hostname: w.hardware.hostname.clone(),
            state: format!("{:?}", w.state).to_lowercase(),
        };
        cap_cpu
            .get_or_create(&l)
            .set(w.capacity.cpu.0 as f64 / 1000.0);
        res_cpu
            .get_or_create(&l)
            .set(w.allocated.cpu.0 as f64 / 1000.0);
        cap_mem.get_or_create(&l).set(w.capacity.memory.0 as f64);
        res_mem.get_or_create(&l).set(w.allocated.memory.0 as f64);
        cap_gpu.get_or_create(&l).set(w.capacity.gpus.len() as f64);
        res_gpu.get_or_create(&l).set(w.allocated.gpus.len() as f64);
    }

    // Tasks and the queue.
    let tasks: Family<StateL, F64> = family(
        &mut r,
        "testmesh_tasks",
        "Tasks by state (the ledger keeps every task)",
    );
    for s in TaskState::ALL {
        tasks
            .get_or_create(&StateL {
                state: s.to_string(),
            })
            .set(0.0);
    }
    for t in ledger.tasks() {
        tasks
            .get_or_create(&StateL {
                state: t.state.to_string(),
            })
            .inc();
    }
    gauge(
        &mut r,
        "testmesh_queue_pending_tasks",
        "Tasks waiting for a worker",
        ledger.pending_count() as f64,
    );
    counter(
        &mut r,
        "testmesh_tasks_submitted",
        "Tasks ever submitted",
        ledger.task_count() as u64,
    );
    counter(
        &mut r,
        "testmesh_attempts_finished",
        "Attempts that ran to an end of their own (succeeded, failed, timed out)",
        ledger.history_total(),
    );

    // Autoscaling.
    let s = ledger.scaling();
    let decisions: Family<KindL, F64> = family(
        &mut r,
        "testmesh_scaling_recent_decisions",
        "Scaling decisions among the last 1,000 recorded, by kind",
    );
    for k in [DecisionKind::Up, DecisionKind::Down, DecisionKind::Hold] {
        let kind = serde_json::to_value(k)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let n = s.decisions().filter(|d| d.kind == k).count();
        decisions.get_or_create(&KindL { kind }).set(n as f64);
    }
    let instances: Family<InstanceL, F64> = family(
        &mut r,
        "testmesh_scaling_instances",
        "Cloud instances by provider and state (ended ones: the latest 1,000)",
    );
    for i in s.instances() {
        instances
            .get_or_create(&InstanceL {
                provider: i.provider.clone(),
                state: i.state.to_string(),
            })
            .inc();
    }
    gauge(
        &mut r,
        "testmesh_scaling_cost_dollars_per_hour",
        "What the running instances cost per hour",
        s.instances()
            .filter(|i| !i.state.is_ended())
            .map(|i| i.price_micros_per_hour)
            .sum::<u64>() as f64
            / 1e6,
    );
    drop(ledger);
    let errors: Family<ProviderL, Counter<u64>> = family(
        &mut r,
        "testmesh_provider_errors",
        "Provider failures seen by this node's scaler",
    );
    for p in crate::core::scaler::view(&st.core.scaler, st.core.clock.instant()).providers {
        errors
            .get_or_create(&ProviderL { provider: p.name })
            .inc_by(p.errors_total);
    }
    gauge(&mut r, "testmesh_up", "1: this node answers", 1.0);

    let mut out = String::new();
    encode(&mut out, &r)?;
    Ok(out)
}

/// The classic text format (0.0.4) from OpenMetrics text, for scrapers and tools that do not
/// ask for OpenMetrics (`promtool check metrics`, older agents): a counter family's HELP and
/// TYPE name its `_total` sample, and there is no `# EOF`. Our exposition has no units, no
/// exemplars and no created timestamps, so nothing else differs.
pub fn to_classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// OpenMetrics when the scraper asks for it (Prometheus does), the classic text format
/// otherwise.
pub async fn metrics(
    State(st): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let latest = st.core.stats.latest_all().await;
    let body = render(&st, &latest)
        .map_err(|e| ApiError::Unavailable(format!("encoding metrics: {e}")))?;
    let openmetrics = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    Ok(if openmetrics {
        (
            [(
                CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response()
    } else {
        (
            [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            to_classic(&body),
        )
            .into_response()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_format_names_counter_samples_and_drops_eof() {
        let om = "# HELP a_tasks Tasks.\n# TYPE a_tasks counter\na_tasks_total 3\n# HELP b B.\n# TYPE b gauge\nb 1.0\n# EOF\n";
        assert_eq!(
            to_classic(om),
            "# HELP a_tasks_total Tasks.\n# TYPE a_tasks_total counter\na_tasks_total 3\n# HELP b B.\n# TYPE b gauge\nb 1.0\n"
        );
    }
}
