//! Live updates: a WebSocket at `/dashboard/live` that pushes a summary of the cluster every
//! interval; the page updates its figures and reloads its charts on each. Browsers do not
//! apply the same-origin rule to WebSockets, so the server refuses cross-site upgrades (the
//! node's access guard checks `Origin`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use serde_json::json;

use crate::Source;

#[derive(Clone)]
pub struct Live {
    pub source: Arc<dyn Source>,
    pub interval: Duration,
}

/// The summary pushed to pages.
pub fn summary(src: &dyn Source) -> serde_json::Value {
    let o = src.overview();
    let now = src.now();
    let tasks: serde_json::Map<String, serde_json::Value> = o
        .tasks_by_state
        .iter()
        .map(|(s, n)| (s.to_string(), json!(n)))
        .collect();
    json!({
        "at": now,
        "node": o.node,
        "leader": o.leader,
        "term": o.term,
        "workers": o.workers.len(),
        "tasks": tasks,
    })
}

pub async fn upgrade(ws: WebSocketUpgrade, State(live): State<Live>) -> Response {
    ws.on_upgrade(move |socket| push(socket, live))
}

async fn push(mut socket: WebSocket, live: Live) {
    let mut tick = tokio::time::interval(live.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            // The page never sends; a close (or an error) ends the stream.
            m = socket.recv() => match m {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            },
        }
        let text = summary(live.source.as_ref()).to_string();
        if socket.send(Message::Text(text.into())).await.is_err() {
            return;
        }
    }
}

/// The page side: apply each summary, redraw the page's charts, reconnect when the node
/// restarts. Charts are inline SVG (so their tooltips work); each is fetched again and swapped.
pub const SCRIPT: &str = r#"
(function connect() {
  const live = document.getElementById('live');
  const set = (id, v) => { const e = document.getElementById(id); if (e) e.textContent = v; };
  const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/dashboard/live');
  ws.onopen = () => { live.textContent = 'live'; };
  ws.onmessage = (e) => {
    const d = JSON.parse(e.data);
    set('leader', d.leader || 'none');
    set('term', d.term);
    document.querySelectorAll('[id^=count-]').forEach((c) => { c.textContent = d.tasks[c.id.slice(6)] || 0; });
    document.querySelectorAll('figure.chart[data-chart]').forEach((f) => {
      fetch('/dashboard/charts/' + f.dataset.chart + '.svg' + (location.search ? location.search + '&' : '?') + 't=' + d.at).then((r) => r.ok ? r.text() : Promise.reject(r.status)).then((text) => {
        const box = document.createElement('div');
        box.innerHTML = text;
        const fresh = box.querySelector('svg');
        const old = f.querySelector('svg');
        if (fresh && old) { f.replaceChild(fresh, old); f.dataset.updated = String(d.at); }
      }).catch(() => {});
    });
    live.textContent = 'live · updated ' + new Date(d.at).toLocaleTimeString();
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  };
  ws.onclose = () => { live.textContent = 'disconnected, retrying…'; setTimeout(connect, 2000); };
})();
"#;
