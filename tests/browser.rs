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
