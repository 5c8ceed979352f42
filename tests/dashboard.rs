//! The dashboard of a real node: every chart with data, well-formed, and the pages that show
//! them.

// Tests measure their own deadlines; the one-clock rule is for the product code.
#![allow(clippy::disallowed_methods)]

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use serde_json::json;
use support::{TestNode, show, wait_for};
use testmesh_consensus::task::TaskState;

async fn fetch(node: &TestNode, path: &str) -> (u16, String, String) {
    let r = reqwest::get(format!("{}{path}", node.url)).await.unwrap();
    let code = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (code, ct, r.text().await.unwrap())
}

/// Shapes drawn: rects and paths beyond a handful of axis and background elements.
fn drawn(svg: &str) -> usize {
    let doc =
        roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("malformed SVG ({e}):\n{svg}"));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    doc.descendants()
        .filter(|n| n.has_tag_name("rect") || n.has_tag_name("polyline") || n.has_tag_name("path"))
        .count()
}

#[tokio::test]
async fn every_chart_renders_with_data_and_the_overview_shows_them() {
    let node = TestNode::start(&[
        "--simulate-gpus",
        "2xSim A100:40GiB",
        "--stats-interval",
        "200ms",
    ])
    .await;
    let id = node
        .submit(json!({"command": ["sleep", "0.5"], "cpu": "10m", "gpus": 1,
            "env": {"TESTMESH_SIMULATED_GPU_MIB": "512"}}))
        .await;
    let t = node.wait_state(id, TaskState::Succeeded).await;
    // The charts draw this node's statistics: wait until they reach past the task's end (every
    // sample of its run is in then).
    let end = t.task.finished_at.expect("a finished task has an end");
    let me = node.node_id();
    let caught_up = wait_for(Duration::from_secs(10), async || {
        let st = node.stats().await;
        st.nodes
            .get(&me)
            .and_then(|n| n.latest.as_ref())
            .is_some_and(|p| p.at > end)
            .then_some(())
    })
    .await;
    assert!(
        caught_up.is_some(),
        "no statistics after the task's end ({end:?}): {}",
        show(&node.stats().await)
    );

    let (_, empty_ct, empty) = fetch(&node, "/dashboard/charts/scaling.svg").await;
    assert_eq!(empty_ct, "image/svg+xml");
    let baseline = drawn(&empty);
    for name in [
        "cpu",
        "memory",
        "gpu",
        "gpu_memory",
        "allocation",
        "efficiency",
        "efficiency_by_task",
        "cost",
    ] {
        let (code, ct, svg) = fetch(&node, &format!("/dashboard/charts/{name}.svg")).await;
        assert_eq!(code, 200, "{name}: {svg}");
        assert_eq!(ct, "image/svg+xml", "{name}");
        let n = drawn(&svg);
        if name == "efficiency_by_task" {
            // One task name: two bars and its tooltip.
            assert!(svg.contains("<title>sleep: 1 attempts"), "{svg}");
            continue;
        }
        assert!(
            n > 20,
            "{name}: only {n} shapes drawn — empty chart?\n{svg}"
        );
        assert!(
            svg.contains("vm") || svg.contains(&node.node_id()[..6]) || n > baseline,
            "{name}"
        );
    }
    let (code, _, body) = fetch(&node, "/dashboard/charts/nope.svg").await;
    assert_eq!(code, 404);
    assert!(body.contains("allocation"), "lists the charts: {body}");
    let (code, _, body) = fetch(&node, "/dashboard/charts/cpu.gif").await;
    assert_eq!(code, 404);
    assert!(body.contains("NAME.svg or NAME.png"), "{body}");
    let (code, _, body) = fetch(&node, "/dashboard/charts/cpu.svg?since=5").await;
    assert_eq!(code, 400);
    assert!(body.contains("unit"), "{body}");

    // PNG export: a real image of the chart's size, drawn.
    let r = reqwest::get(format!("{}/dashboard/charts/gpu.png", node.url))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    let png = r.bytes().await.unwrap();
    assert_eq!(&png[1..4], b"PNG");
    // Width in the IHDR chunk: twice the SVG's 900 px.
    assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 1800);
    assert!(png.len() > 10_000, "{} bytes", png.len());

    // Every page, with its charts inline (tooltips work there) and its tables.
    for (path, charts, tables) in [
        (
            "/",
            &["allocation", "cpu", "scaling"][..],
            &["workers", "task-counts"][..],
        ),
        (
            "/dashboard/utilisation",
            &["cpu", "memory", "gpu", "gpu_memory"][..],
            &[][..],
        ),
        (
            "/dashboard/allocation",
            &["allocation"][..],
            &["utilisation-now"][..],
        ),
        (
            "/dashboard/scaling",
            &["scaling"][..],
            &["decisions", "instances"][..],
        ),
        (
            "/dashboard/efficiency",
            &["efficiency", "efficiency_by_task"][..],
            &["efficiency-table", "suggestions"][..],
        ),
        ("/dashboard/cost", &["cost"][..], &["cost-by-provider"][..]),
        (
            "/dashboard/insights",
            &[][..],
            &["patterns-table", "predictions-table", "instance-types"][..],
        ),
    ] {
        let (code, ct, page) = fetch(&node, path).await;
        assert_eq!(code, 200, "{path}");
        assert!(ct.starts_with("text/html"), "{path}");
        for name in charts {
            let at = page
                .find(&format!("<figure class=chart data-chart={name}><svg"))
                .unwrap_or_else(|| panic!("{path}: no inline {name} chart"));
            let svg = &page[at + page[at..].find("<svg").unwrap()..];
            let svg = &svg[..svg.find("</svg>").unwrap() + 6];
            assert!(drawn(svg) > 5, "{path}: {name}");
        }
        for t in tables {
            assert!(
                page.contains(&format!("<table id={t}>")),
                "{path}: table {t}"
            );
        }
    }
    let (_, _, page) = fetch(&node, "/dashboard/efficiency").await;
    assert!(
        page.contains("<title>") && page.contains("attempts"),
        "tooltips"
    );
    let (_, _, page) = fetch(&node, "/dashboard/insights").await;
    assert!(page.contains("learned from"), "the predictor's standing");
}

/// The next message of a live stream, as JSON.
async fn next_update<S>(ws: &mut S) -> serde_json::Value
where
    S: futures::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use futures::StreamExt;
    let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("an update within 10 s")
        .unwrap()
        .unwrap();
    serde_json::from_str(m.to_text().unwrap()).unwrap()
}

#[tokio::test]
async fn live_updates_arrive_over_the_websocket_and_cross_site_ones_are_refused() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let node = TestNode::start(&["--dashboard-interval", "200ms"]).await;
    let ws_url = node.url.replace("http://", "ws://") + "/dashboard/live";
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    let first = next_update(&mut ws).await;
    assert_eq!(first["node"], node.node_id());
    assert!(first["tasks"].get("succeeded").is_none());
    let submitted = std::time::Instant::now();
    let id = node
        .submit(json!({"command": ["true"], "cpu": "10m"}))
        .await;
    node.wait_state(id, TaskState::Succeeded).await;
    loop {
        let u = next_update(&mut ws).await;
        if u["tasks"]["succeeded"] == 1 {
            eprintln!(
                "the finished task showed up on the live stream {:.0} ms after its submission",
                submitted.elapsed().as_secs_f64() * 1000.0
            );
            break;
        }
    }
    // A page on another site may not open the stream (browsers send its Origin).
    let mut req = ws_url.into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    let e = tokio_tungstenite::connect_async(req).await.unwrap_err();
    assert!(e.to_string().contains("403"), "{e}");
}

#[tokio::test]
async fn the_report_has_a_section_per_chart_and_the_tables() {
    let node = TestNode::start(&[]).await;
    let id = node
        .submit(json!({"command": ["true"], "name": "unit", "cpu": "10m"}))
        .await;
    node.wait_state(id, TaskState::Succeeded).await;
    let out = node.dir.path().join("report.html");
    let o = node.cli(&["report", "--out", out.to_str().unwrap(), "--since", "10m"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(&out).unwrap();
    for chart in [
        "cpu",
        "memory",
        "gpu",
        "gpu_memory",
        "allocation",
        "scaling",
        "efficiency",
        "efficiency_by_task",
        "cost",
    ] {
        let at = html
            .find(&format!("<section id=chart-{chart}>"))
            .unwrap_or_else(|| panic!("no section for {chart}"));
        assert!(html[at..].starts_with(&format!("<section id=chart-{chart}><h2>")));
        assert!(html[at..].contains("<svg"), "{chart} has its SVG inline");
    }
    for id in [
        "summary",
        "tasks",
        "utilisation",
        "efficiency",
        "scaling",
        "recommendations",
    ] {
        assert!(html.contains(&format!("<section id={id}>")), "{id}");
    }
    assert!(
        html.contains("<td>succeeded</td><td>1</td>"),
        "task outcomes"
    );
    for external in ["src=\"http", "src='http", "href=\"http", "url(http"] {
        assert!(
            !html.contains(external),
            "no external requests ({external})"
        );
    }

    // The PDF: it opens, and each chart has its section (text stays text).
    let pdf = node.dir.path().join("report.pdf");
    let o = node.cli(&["report", "--out", pdf.to_str().unwrap(), "--since", "10m"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    if support::tool_or_skip("pdfinfo", "poppler-utils") {
        let info = std::process::Command::new("pdfinfo")
            .arg(&pdf)
            .output()
            .unwrap();
        assert!(
            info.status.success(),
            "{}",
            String::from_utf8_lossy(&info.stderr)
        );
        let info = String::from_utf8_lossy(&info.stdout);
        let pages: u32 = info
            .lines()
            .find_map(|l| l.strip_prefix("Pages:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(pages >= 3, "{info}");
        assert!(info.contains("testmesh report"), "{info}");
        let text = std::process::Command::new("pdftotext")
            .arg(&pdf)
            .arg("-")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&text.stdout);
        for heading in [
            "CPU utilisation per worker",
            "Memory per worker",
            "GPU utilisation per worker",
            "GPU memory per worker",
            "Resource allocation: used, reserved, free",
            "Scaling history",
            "Efficiency: reserved against used over time",
            "Efficiency per task name",
            "Cloud instances and cost",
            "Task outcomes",
            "Recommendations",
        ] {
            assert!(text.contains(heading), "no section {heading:?} in:\n{text}");
        }
    }
    let o = node.cli(&["report", "--out", "/tmp/x.txt"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains(".html or .pdf"));
}

#[tokio::test]
async fn the_demo_runs_a_cluster_scales_it_and_writes_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(support::BIN)
        .args([
            "demo",
            "--workers",
            "2",
            "--duration",
            "4s",
            "--http",
            "127.0.0.1:0",
            "--exit-when-done",
        ])
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("dashboard at http://127.0.0.1:"), "{out}");
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(html.contains("<section id=chart-scaling>"));
    assert!(
        html.contains("<td>up</td>"),
        "the autoscaler launched simulated workers"
    );
    // Nothing of the demo keeps running (its processes may take a moment to be gone).
    no_process_left(dir.path()).await;
}

#[tokio::test]
async fn the_tasks_pages_list_the_queue_and_show_a_task_with_its_output() {
    let node = TestNode::start(&[]).await;
    let done = node
        .submit(
            json!({"command": ["sh", "-c", "echo '<b>hello</b>'; echo oops >&2; exit 3"],
            "name": "<i>shouty</i>", "cpu": "10m"}),
        )
        .await;
    node.wait_state(done, TaskState::Failed).await;
    node.submit_body(
        json!({"tasks": [{"command": ["true"], "name": "waits", "gpus": 8}],
           "allow_unschedulable": true}),
    )
    .await;
    let (code, _, list) = fetch(&node, "/dashboard/tasks").await;
    assert_eq!(code, 200);
    let queue = &list[list.find("<table id=queued>").unwrap()..];
    let queue = &queue[..queue.find("</table>").unwrap()];
    assert!(queue.contains("waits"), "{queue}");
    let finished = &list[list.find("<table id=finished>").unwrap()..];
    assert!(finished.contains("&lt;i&gt;shouty&lt;/i&gt;") && !finished.contains("<i>shouty"));
    let (code, _, page) = fetch(&node, &format!("/dashboard/tasks/{done}")).await;
    assert_eq!(code, 200);
    assert!(page.contains("<b id=state>failed</b>"), "{page}");
    assert!(page.contains("exit 3"));
    assert!(
        page.contains("&lt;b&gt;hello&lt;/b&gt;"),
        "stdout tail, escaped"
    );
    assert!(page.contains("oops"), "stderr tail");
    assert_eq!(fetch(&node, "/dashboard/tasks/999999").await.0, 404);
    assert_eq!(fetch(&node, "/dashboard/tasks/x").await.0, 400);
}

#[tokio::test]
async fn a_followers_dashboard_shows_the_same_cluster_as_the_leaders() {
    let nodes = support::cluster_with(2, &["--stats-interval", "200ms"]).await;
    let id = nodes[0]
        .submit(json!({"command": ["true"], "name": "seen-everywhere", "cpu": "10m"}))
        .await;
    nodes[0].wait_state(id, TaskState::Succeeded).await;
    let ids: Vec<String> = nodes.iter().map(|n| n.node_id()).collect();
    // Each replica applies the result in its own time: wait until both pages agree.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut pages = Vec::new();
        for n in &nodes {
            pages.push(fetch(n, "/").await.2);
        }
        let complete = |p: &String| {
            ids.iter()
                .all(|id| p.contains(&format!("<code>{id}</code>")))
                && p.contains("<td id=count-succeeded>1</td>")
                && p.contains("seen-everywhere")
        };
        let leader = |p: &String| {
            let at = p.find("<code id=leader>").unwrap() + 16;
            p[at..at + 16].to_string()
        };
        if pages.iter().all(complete) && leader(&pages[0]) == leader(&pages[1]) {
            assert!(ids.contains(&leader(&pages[0])));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pages never agreed:\n{}\n---\n{}",
            pages[0],
            pages[1]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Gossip gives every node the other's statistics: both rows in each node's allocation
    // table and heatmap.
    for n in &nodes {
        let (_, _, page) = fetch(n, "/dashboard/allocation").await;
        let table = &page[page.find("<table id=utilisation-now>").unwrap()..];
        let table = &table[..table.find("</table>").unwrap()];
        assert_eq!(
            table.matches("<tr>").count(),
            3,
            "header and two workers: {table}"
        );
    }
}

/// Without --exit-when-done the demo keeps its dashboard up after the workload, until Ctrl-C.
#[tokio::test]
async fn the_demo_keeps_serving_after_its_workload_until_interrupted() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(support::BIN)
        .args([
            "demo",
            "--workers",
            "1",
            "--duration",
            "2s",
            "--http",
            "127.0.0.1:0",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut url = None;
    let mut seen = Vec::new();
    let done = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("the demo said nothing more: {seen:?}"));
        seen.push(line.clone());
        if let Some(rest) = line.split("dashboard at ").nth(1)
            && url.is_none()
        {
            url = rest
                .split_whitespace()
                .next()
                .map(|u| u.trim_end_matches('/').to_string());
        }
        if line.contains("keeps serving") {
            break line;
        }
    };
    assert!(done.contains("Ctrl-C"), "{done}");
    let url = url.expect("the dashboard's URL");
    // Still serving after the workload (twice, a moment apart).
    for _ in 0..2 {
        let page = reqwest::get(format!("{url}/")).await.unwrap();
        assert_eq!(page.status(), 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    no_process_left(dir.path()).await;
}

/// Waits (10 s at most) until no process names `dir` on its command line.
async fn no_process_left(dir: &std::path::Path) {
    let mut left = String::new();
    let none_left = wait_for(Duration::from_secs(10), async || {
        let o = std::process::Command::new("pgrep")
            .arg("-a")
            .arg("-f")
            .arg(dir)
            .output()
            .unwrap();
        left = String::from_utf8_lossy(&o.stdout).trim().to_string();
        left.is_empty().then_some(())
    })
    .await;
    assert!(none_left.is_some(), "leftover processes:\n{left}");
}
