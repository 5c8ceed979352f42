//! The dashboard in a real browser: Debian's chromium driven through chromedriver (WebDriver)
//! loads a running node's pages, checks that every chart renders with its tooltips, sees a
//! live update arrive after a task is submitted, and saves a screenshot.

// Tests measure their own deadlines; the one-clock rule is for the product code.
#![allow(clippy::disallowed_methods)]

#[path = "support/mod.rs"]
mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use support::{TestNode, wait_for};
use testmesh_consensus::task::TaskState;

/// chromedriver on a free loopback port; killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn browser() -> Option<(Driver, Client)> {
    if !support::tool_or_skip("chromedriver", "chromium-driver")
        || !support::tool_or_skip("chromium", "chromium")
    {
        return None;
    }
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", "--window-size=1400,1000"]}),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&driver.url)
            .await
        {
            Ok(c) => return Some((driver, c)),
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for chromedriver: {e}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => panic!("chromedriver did not start a browser: {e}"),
        }
    }
}

/// Runs `js` (a function body) in the page and returns its value.
async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.expect(script)
}

/// Waits until `js` returns true.
async fn until(c: &Client, script: &str, secs: u64) {
    let mut last = Value::Null;
    let ok = wait_for(Duration::from_secs(secs), async || {
        last = js(c, script).await;
        (last == json!(true)).then_some(())
    })
    .await;
    assert!(ok.is_some(), "not within {secs} s: {script} (last: {last})");
}

#[tokio::test]
async fn every_page_renders_its_charts_live_in_chromium() {
    let node = TestNode::start(&[
        "--simulate-gpus",
        "2xSim A100:40GiB",
        "--stats-interval",
        "200ms",
        "--dashboard-interval",
        "300ms",
    ])
    .await;
    let Some((_driver, c)) = browser().await else {
        return;
    };
    let id = node
        .submit(json!({"command": ["sleep", "0.3"], "name": "warm-up", "cpu": "10m", "gpus": 1}))
        .await;
    node.wait_state(id, TaskState::Succeeded).await;

    let pages = [
        ("/", &["allocation", "cpu", "scaling"][..]),
        (
            "/dashboard/utilisation",
            &["cpu", "memory", "gpu", "gpu_memory"][..],
        ),
        ("/dashboard/allocation", &["allocation"][..]),
        ("/dashboard/scaling", &["scaling"][..]),
        (
            "/dashboard/efficiency",
            &["efficiency", "efficiency_by_task"][..],
        ),
        ("/dashboard/cost", &["cost"][..]),
        ("/dashboard/insights", &[][..]),
        ("/dashboard/tasks", &[][..]),
    ];
    for (path, charts) in pages {
        c.goto(&format!("{}{path}", node.url)).await.unwrap();
        // The live stream connected.
        until(
            &c,
            "return document.getElementById('live').textContent.startsWith('live');",
            15,
        )
        .await;
        let load = js(
            &c,
            "const n = performance.getEntriesByType('navigation')[0]; return n.loadEventEnd - n.startTime;",
        )
        .await;
        eprintln!("{path}: loaded in {load} ms");
        for name in charts {
            // Rendered: the SVG has a size on screen and drew shapes.
            let drawn = js(
                &c,
                &format!(
                    "const f = document.querySelector('figure[data-chart={name}]');
                     if (!f) return 'no figure';
                     const s = f.querySelector('svg'); const r = s.getBoundingClientRect();
                     return {{w: r.width, h: r.height, shapes: s.querySelectorAll('rect,path,polyline').length,
                              tips: Array.from(s.querySelectorAll('.tips title')).map(t => t.textContent).filter(t => t.length > 0).length}};"
                ),
            )
            .await;
            assert!(
                drawn["w"].as_f64().unwrap_or(0.0) > 300.0,
                "{path} {name}: {drawn}"
            );
            assert!(
                drawn["h"].as_f64().unwrap_or(0.0) > 80.0,
                "{path} {name}: {drawn}"
            );
            assert!(
                drawn["shapes"].as_u64().unwrap_or(0) > 5,
                "{path} {name}: {drawn}"
            );
            if *name != "scaling" {
                assert!(
                    drawn["tips"].as_u64().unwrap_or(0) > 0,
                    "{path} {name} has tooltips: {drawn}"
                );
            }
        }
        // Everything came from the node itself.
        let foreign = js(
            &c,
            "return performance.getEntriesByType('resource').map(r => r.name).filter(n => !n.startsWith(location.origin));",
        )
        .await;
        assert_eq!(foreign, json!([]), "{path}: requests elsewhere");
    }

    // A live update: the task counts change without a reload, and the charts are redrawn.
    c.goto(&node.url).await.unwrap();
    until(
        &c,
        "return document.getElementById('live').textContent.startsWith('live');",
        15,
    )
    .await;
    let before = js(
        &c,
        "return document.getElementById('count-succeeded').textContent;",
    )
    .await;
    assert_eq!(before, json!("1"));
    c.execute("window.__marker = 1;", vec![]).await.unwrap();
    let submitted = Instant::now();
    let id = node
        .submit(json!({"command": ["true"], "name": "live", "cpu": "10m"}))
        .await;
    until(
        &c,
        "return document.getElementById('count-succeeded').textContent === '2';",
        20,
    )
    .await;
    eprintln!(
        "the browser showed the finished task {:.0} ms after its submission",
        submitted.elapsed().as_secs_f64() * 1000.0
    );
    node.wait_state(id, TaskState::Succeeded).await;
    assert_eq!(
        js(&c, "return window.__marker;").await,
        json!(1),
        "no reload"
    );
    until(
        &c,
        "return Array.from(document.querySelectorAll('figure.chart')).every(f => f.dataset.updated);",
        15,
    )
    .await;

    // A task page opens from the overview's list.
    c.find(Locator::Css("#recent a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(&c, "return !!document.getElementById('state');", 10).await;

    c.goto(&node.url).await.unwrap();
    until(
        &c,
        "return document.getElementById('live').textContent.startsWith('live');",
        15,
    )
    .await;
    let png = c.screenshot().await.unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&out, &png).unwrap();
    eprintln!("screenshot: {} ({} bytes)", out.display(), png.len());
    assert!(
        png.len() > 20_000,
        "a screenshot of a drawn page, not a blank one"
    );
    c.close().await.unwrap();
}

/// The share of each time chart's x axis its tooltips (drawn only where there is data)
/// cover, per chart, read from the SVG of the page.
const COVERAGE: &str = "return Array.from(document.querySelectorAll('figure.chart svg[data-x0]')).map(s => {
  const x0 = Number(s.dataset.x0), x1 = Number(s.dataset.x1);
  const r = Array.from(s.querySelectorAll('.tips rect')).map(t => [Number(t.getAttribute('x')), Number(t.getAttribute('x')) + Number(t.getAttribute('width'))]);
  if (!r.length) return [s.closest('figure').dataset.chart, 0];
  const lo = Math.max(x0, Math.min(...r.map(a => a[0]))), hi = Math.min(x1, Math.max(...r.map(a => a[1])));
  return [s.closest('figure').dataset.chart, (hi - lo) / (x1 - x0)];
});";

/// A running `testmesh demo`: interrupted (Ctrl-C) and waited for on drop, even when the
/// test fails, so no cluster outlives the test.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Starts `testmesh demo` and returns it with its dashboard's URL once the workload is done.
fn demo(dir: &std::path::Path, secs: u32) -> (Demo, String) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(support::BIN)
        .args(["demo", "--workers", "3", "--duration", &format!("{secs}s")])
        .args(["--http", "127.0.0.1:0"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let demo = Demo(child);
    let mut url = None;
    for line in lines.by_ref().map_while(Result::ok) {
        if let Some(rest) = line.split("dashboard at ").nth(1) {
            url = rest
                .split_whitespace()
                .next()
                .map(|u| u.trim_end_matches('/').to_string());
        }
        if line.contains("keeps serving") {
            break;
        }
    }
    // Keep reading: the demo prints as it stops.
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
    (demo, url.expect("the demo's dashboard URL"))
}

#[tokio::test]
async fn after_a_short_demo_the_charts_fit_its_data_and_the_picker_and_filters_change_them() {
    let Some((_driver, c)) = browser().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (demo, url) = demo(dir.path(), 20);
    for path in ["/dashboard/utilisation", "/dashboard/efficiency", "/"] {
        c.goto(&format!("{url}{path}")).await.unwrap();
        let cover = js(&c, COVERAGE).await;
        eprintln!("{path}: share of the x axis with data: {cover}");
        let charts = cover.as_array().unwrap();
        assert!(!charts.is_empty(), "{path}: time charts");
        for ch in charts {
            let (name, share) = (ch[0].as_str().unwrap(), ch[1].as_f64().unwrap());
            // The GPU charts have data only if a simulated GPU worker came up.
            if share == 0.0 && name.starts_with("gpu") {
                continue;
            }
            assert!(
                share > 0.8,
                "{path} {name}: data covers {share:.2} of the axis"
            );
        }
        // Names people know: the simulated workers by name, not "vm" four times.
        if path == "/dashboard/utilisation" {
            let cpu = js(
                &c,
                "return document.querySelector('figure[data-chart=cpu] svg').textContent;",
            )
            .await;
            assert!(cpu.as_str().unwrap().contains("sim-"), "{cpu}");
        }
    }
    // The range picker: the URL and the charts follow.
    c.goto(&format!("{url}/dashboard/utilisation"))
        .await
        .unwrap();
    c.execute(
        "const s = document.querySelector('#view select[name=window]'); s.value = '15m'; s.dispatchEvent(new Event('change'));",
        vec![],
    )
    .await
    .unwrap();
    until(&c, "return location.search.includes('window=15m');", 15).await;
    let caption = js(
        &c,
        "return document.querySelector('figure[data-chart=cpu] svg').textContent;",
    )
    .await;
    assert!(
        caption.as_str().unwrap().contains("last 15 min"),
        "{caption}"
    );
    assert_eq!(
        js(&c, "return Array.from(document.querySelectorAll('nav a')).every(a => !a.href.includes('/dashboard/') || a.href.includes('window=15m'));").await,
        json!(true),
        "the navigation keeps the window"
    );
    // A filter: a GPU model nobody has empties the heatmaps, and stays in the URL.
    let rows = "return document.querySelectorAll('figure[data-chart=cpu] .tips title').length;";
    let before = js(&c, rows).await.as_u64().unwrap();
    assert!(before > 0);
    c.execute(
        "document.querySelector('#view input[name=gpu]').value = 'nosuchgpu'; document.querySelector('#view button').click();",
        vec![],
    )
    .await
    .unwrap();
    until(&c, "return location.search.includes('gpu=nosuchgpu') && location.search.includes('window=15m') && !location.search.includes('from=');", 15).await;
    assert_eq!(js(&c, rows).await, json!(0), "the filter changed the chart");
    // Drag to zoom: a past window, in the URL as from/to.
    c.goto(&format!("{url}/dashboard/utilisation"))
        .await
        .unwrap();
    c.execute(
        "const s = document.querySelector('figure[data-chart=cpu] svg'); const r = s.getBoundingClientRect();
         const at = (f) => r.left + r.width * (Number(s.dataset.x0) + f * (Number(s.dataset.x1) - Number(s.dataset.x0))) / s.viewBox.baseVal.width;
         const y = r.top + r.height / 2;
         s.dispatchEvent(new MouseEvent('mousedown', {bubbles: true, clientX: at(0.2), clientY: y, button: 0}));
         document.dispatchEvent(new MouseEvent('mousemove', {bubbles: true, clientX: at(0.6), clientY: y}));
         document.dispatchEvent(new MouseEvent('mouseup', {bubbles: true, clientX: at(0.6), clientY: y}));",
        vec![],
    )
    .await
    .unwrap();
    until(
        &c,
        "return location.search.includes('from=') && location.search.includes('to=');",
        15,
    )
    .await;
    let caption = js(
        &c,
        "return document.querySelector('figure[data-chart=cpu] svg').textContent;",
    )
    .await;
    assert!(
        caption.as_str().unwrap().contains("UTC"),
        "a past window: {caption}"
    );
    drop(demo);
    c.close().await.unwrap();
}

#[tokio::test]
async fn a_pending_task_shows_its_place_and_an_eta_after_the_running_tasks() {
    let node = TestNode::start(&["--cpus", "1"]).await;
    let Some((_driver, c)) = browser().await else {
        return;
    };
    // History to learn from: the same task name, about a second each.
    for _ in 0..3 {
        let id = node
            .submit(json!({"command": ["sleep", "1"], "name": "eta-job", "cpu": 1}))
            .await;
        node.wait_state(id, TaskState::Succeeded).await;
    }
    let ids: Vec<u64> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(
                node.submit(json!({"command": ["sleep", "3"], "name": "eta-job", "cpu": 1}))
                    .await,
            );
        }
        v
    };
    let running = node.wait_state(ids[0], TaskState::Running).await;
    let started = running.task.attempts[0].started_at.unwrap().0;
    c.goto(&format!("{}/dashboard/tasks", node.url))
        .await
        .unwrap();
    let rows = js(
        &c,
        "return Array.from(document.querySelectorAll('#queued tr')).slice(1).map(r => [
           Number(r.querySelector('td a').textContent), Number(r.querySelector('.position')?.textContent),
           Number(r.querySelector('.starts')?.dataset.ms), Number(r.querySelector('.finishes')?.dataset.ms)]);",
    )
    .await;
    eprintln!("queue with estimates: {rows} (running since {started})");
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    let mut last_start = 0;
    for (k, r) in rows.iter().enumerate() {
        let (id, pos, start, finish) = (
            r[0].as_u64().unwrap(),
            r[1].as_u64().unwrap(),
            r[2].as_u64().unwrap(),
            r[3].as_u64().unwrap(),
        );
        assert_eq!(id, ids[k + 1]);
        assert_eq!(pos as usize, k + 1);
        // It waits for the running task's predicted end (about a second after its start,
        // from the history) and for those ahead of it.
        assert!(
            start >= started + 500,
            "position {pos} starts at {start}, the running task began at {started}"
        );
        assert!(start >= last_start && finish > start, "{r}");
        last_start = start;
    }
    // The API and the CLI say the same.
    let (_, v) = node.get(&format!("/api/v1/tasks/{}", ids[3])).await;
    assert_eq!(v["eta"]["position"], 3, "{v}");
    let out = Command::new(support::BIN)
        .args(["task", &ids[3].to_string(), "--server", &node.url])
        .env("TESTMESH_DATA_DIR", node.data_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("position 3 · starts in about"), "{text}");
    c.close().await.unwrap();
}

/// A dashboard source with `n` simulated workers (no node): enough to render every page.
struct Many {
    workers: Vec<testmesh_consensus::model::Worker>,
    series: Vec<testmesh_dashboard::charts::NodeSeries>,
}

const NOW: u64 = 1_800_000_000_000;

impl testmesh_dashboard::Source for Many {
    fn now(&self) -> u64 {
        NOW
    }
    fn overview(&self) -> testmesh_dashboard::Overview {
        testmesh_dashboard::Overview {
            node: "1".into(),
            workers: self.workers.clone(),
            ..Default::default()
        }
    }
    fn series(
        &self,
        _w: u64,
    ) -> futures::future::BoxFuture<'_, (u64, Vec<testmesh_dashboard::charts::NodeSeries>)> {
        Box::pin(async move { (NOW, self.series.clone()) })
    }
    fn usage(&self) -> futures::future::BoxFuture<'_, Vec<testmesh_dashboard::views::WorkerUsage>> {
        Box::pin(async { Vec::new() })
    }
    fn scaling(&self) -> testmesh_dashboard::views::ScalingView {
        Default::default()
    }
    fn reservations(&self, _s: u64) -> Vec<testmesh_dashboard::views::ReservedSpan> {
        Vec::new()
    }
    fn tasks(&self, _l: usize) -> Vec<testmesh_consensus::task::Task> {
        Vec::new()
    }
    fn task(&self, _id: u64) -> Option<testmesh_consensus::task::Task> {
        None
    }
    fn analysis(
        &self,
        w: u64,
    ) -> futures::future::BoxFuture<'_, testmesh_dashboard::views::Analysis> {
        Box::pin(async move {
            testmesh_dashboard::views::Analysis {
                window_ms: w,
                ..Default::default()
            }
        })
    }
}

fn many(n: u64) -> Many {
    use testmesh_consensus::model::{Capacity, Hardware, Worker, WorkerState};
    use testmesh_consensus::{Bytes, MilliCpu, NodeId, UnixMillis};
    let workers = (0..n)
        .map(|i| Worker {
            id: NodeId(i + 1),
            hardware: Hardware {
                hostname: "vm".into(),
                name: format!("rack{}-node{:03}", i / 40, i),
                ..Default::default()
            },
            capacity: Capacity {
                cpu: MilliCpu(16_000),
                memory: Bytes(64 << 30),
                ..Default::default()
            },
            labels: Default::default(),
            state: WorkerState::Active,
            boot_id: 1,
            version: String::new(),
            registered_at: UnixMillis(0),
            allocated: Default::default(),
            record: Default::default(),
            quarantine: None,
        })
        .collect();
    let series = (0..n)
        .map(|i| testmesh_dashboard::charts::NodeSeries {
            node: NodeId(i + 1).to_string(),
            name: format!("rack{}-node{:03}", i / 40, i),
            cores: 16.0,
            points: (0..360u64)
                .map(|k| testmesh_dashboard::charts::StatPoint {
                    at_ms: NOW - 3_600_000 + k * 10_000,
                    cpu: ((i * 13 + k) % 100) as f64 / 100.0,
                    memory: 0.5,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    Many { workers, series }
}

#[tokio::test]
async fn four_hundred_workers_have_no_overlapping_row_labels() {
    let Some((_driver, c)) = browser().await else {
        return;
    };
    let app = testmesh_dashboard::router(std::sync::Arc::new(many(400)), Duration::from_secs(3600));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    for (path, chart) in [
        ("/dashboard/utilisation", "cpu"),
        ("/dashboard/allocation", "allocation"),
    ] {
        c.goto(&format!("{url}{path}")).await.unwrap();
        let labels = js(
            &c,
            &format!(
                "const s = document.querySelector('figure[data-chart={chart}] svg');
                 const w = s.viewBox.baseVal.width;
                 return Array.from(s.querySelectorAll('text[text-anchor=end]'))
                   .filter(t => Number(t.getAttribute('x')) < w * 0.5 && /node/.test(t.textContent))
                   .map(t => {{ const r = t.getBoundingClientRect(); return [r.top, r.bottom, t.textContent.trim()]; }})
                   .sort((a, b) => a[0] - b[0]);"
            ),
        )
        .await;
        let labels = labels.as_array().unwrap();
        eprintln!(
            "{path}: {} row labels, first {:?}",
            labels.len(),
            labels.first()
        );
        assert_eq!(
            labels.len(),
            100,
            "{path}: one label per row, 400 workers in 100 rows"
        );
        for w in labels.windows(2) {
            assert!(
                w[1][0].as_f64().unwrap() >= w[0][1].as_f64().unwrap() - 0.5,
                "{path}: overlapping labels {w:?}"
            );
        }
    }
    c.close().await.unwrap();
}
