//! Scheduled reports: `[[reports]]` in the config file. On the leader, each report is made on
//! its cron schedule (UTC) from the dashboard's report over its window, as PDF or HTML, and
//! delivered to a directory and/or POSTed to a webhook. A failed delivery is tried again
//! (by default after 30 s, 1, 2, 4, 8 min) and shown by `GET /api/v1/reports` and in the log.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;

use crate::core::Core;
use crate::core::reports::ReportStatus;

/// Tries of one report's delivery in all.
pub const TRIES: u32 = 6;
const FIRST_RETRY: Duration = Duration::from_secs(30);
const TICK: Duration = Duration::from_secs(1);

/// One `[[reports]]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileReport {
    pub name: Option<String>,
    /// Cron syntax in UTC: `MIN HOUR DAY MONTH WEEKDAY`, or with seconds first.
    pub schedule: String,
    /// How far back the report looks [default: 24h].
    pub window: Option<String>,
    /// `pdf` (default) or `html`.
    pub format: Option<String>,
    pub directory: Option<PathBuf>,
    pub webhook: Option<String>,
    /// Wait before the first retry of a failed delivery; each next one waits twice as long
    /// [default: 30s].
    pub retry: Option<String>,
}

/// A checked `[[reports]]` entry.
#[derive(Debug, Clone)]
pub struct ReportSpec {
    pub name: String,
    pub schedule_text: String,
    pub schedule: croner::Cron,
    pub window: String,
    pub window_ms: u64,
    pub pdf: bool,
    pub directory: Option<PathBuf>,
    pub webhook: Option<String>,
    pub first_retry: Duration,
}

impl FileReport {
    /// Checks the entry; `i` numbers it in messages.
    pub fn check(self, i: usize) -> Result<ReportSpec, String> {
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| format!("report-{}", i + 1));
        let what = format!("[[reports]] {name:?}");
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "{what}: a name of letters, digits, '-', '_', '.' (at most 64), e.g. nightly"
            ));
        }
        let schedule = croner::Cron::from_str(&self.schedule).map_err(|e| {
            format!(
                "{what}: schedule {:?}: {e}; write cron syntax in UTC, e.g. \"0 6 * * *\" (06:00 daily) or \"*/30 * * * * *\" (every 30 s)",
                self.schedule
            )
        })?;
        let window = self.window.unwrap_or_else(|| "24h".into());
        let window_ms = testmesh_dashboard::view::parse_window(&window)
            .map_err(|e| format!("{what}: window: {e}"))?;
        let pdf = match self.format.as_deref().unwrap_or("pdf") {
            "pdf" => true,
            "html" => false,
            f => return Err(format!("{what}: format {f:?}: pdf or html")),
        };
        if self.directory.is_none() && self.webhook.is_none() {
            return Err(format!(
                "{what}: say where it goes: directory = \"reports\" and/or webhook = \"https://…\""
            ));
        }
        if let Some(w) = &self.webhook
            && !(w.starts_with("http://") || w.starts_with("https://"))
        {
            return Err(format!(
                "{what}: webhook {w:?} is not an http:// or https:// URL"
            ));
        }
        let first_retry = match &self.retry {
            Some(r) => crate::units::parse_duration(r)
                .map_err(|e| format!("{what}: retry: {e}"))?
                .max(Duration::from_secs(1)),
            None => FIRST_RETRY,
        };
        Ok(ReportSpec {
            first_retry,
            name,
            schedule_text: self.schedule,
            schedule,
            window,
            window_ms,
            pdf,
            directory: self.directory,
            webhook: self.webhook,
        })
    }
}

/// The first run of `spec` after `after_ms` (Unix ms).
pub fn next_run(spec: &ReportSpec, after_ms: u64) -> Option<u64> {
    let t = chrono::DateTime::from_timestamp_millis(after_ms as i64)?;
    spec.schedule
        .find_next_occurrence(&t, false)
        .ok()
        .map(|n| n.timestamp_millis() as u64)
}

/// Waits before try `n` (2 = the first retry) of a delivery.
pub fn retry_delay(first: Duration, n: u32) -> Duration {
    first * 2u32.saturating_pow(n.saturating_sub(2))
}

/// A report made and waiting to be delivered (kept for the retries).
struct Pending {
    bytes: Vec<u8>,
    file_name: String,
    /// Targets still to take it.
    to_dir: bool,
    to_hook: bool,
    tries: u32,
    due_ms: u64,
}

/// Runs the schedules while this node leads.
pub async fn run(core: Core, specs: Vec<ReportSpec>, mut shutdown: watch::Receiver<bool>) {
    if specs.is_empty() {
        return;
    }
    core.reports.set(
        specs
            .iter()
            .map(|s| ReportStatus {
                name: s.name.clone(),
                schedule: s.schedule_text.clone(),
                window: s.window.clone(),
                format: if s.pdf { "pdf" } else { "html" }.into(),
                directory: s.directory.as_ref().map(|d| d.display().to_string()),
                webhook: s.webhook.clone(),
                ..Default::default()
            })
            .collect(),
    );
    // HTTPS webhooks are checked against the system's roots.
    let client = crate::tls::client_config(None, None).ok().and_then(|tls| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .use_preconfigured_tls(tls)
            .build()
            .ok()
    });
    let mut next: Vec<Option<u64>> = vec![None; specs.len()];
    let mut pending: Vec<Option<Pending>> = specs.iter().map(|_| None).collect();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let now = core.now().0;
        if !core.leadership.is_leader() {
            // Schedules start afresh on whichever node leads next.
            next.iter_mut().for_each(|n| *n = None);
            continue;
        }
        for (i, spec) in specs.iter().enumerate() {
            let due = *next[i].get_or_insert_with(|| next_run(spec, now).unwrap_or(u64::MAX));
            core.reports
                .update(i, |s| s.next_ms = (due != u64::MAX).then_some(due));
            if now >= due {
                next[i] = next_run(spec, now);
                match make(&core, spec, now).await {
                    Ok(p) => {
                        core.reports.update(i, |s| {
                            s.last_made_ms = Some(now);
                            s.attempts = 0;
                            s.retry_ms = None;
                        });
                        if pending[i].is_some() {
                            tracing::warn!(
                                "report {}: a newer one replaces the one still undelivered",
                                spec.name
                            );
                            core.reports.update(i, |s| s.failed += 1);
                        }
                        pending[i] = Some(p);
                    }
                    Err(e) => {
                        tracing::warn!("report {}: could not be made: {e}", spec.name);
                        core.reports.update(i, |s| {
                            s.last_error = Some(format!("making it: {e}"));
                            s.failed += 1;
                        });
                    }
                }
            }
            let Some(p) = pending[i].as_mut() else {
                continue;
            };
            if now < p.due_ms {
                continue;
            }
            p.tries += 1;
            let errors = deliver(spec, p, client.as_ref()).await;
            let tries = p.tries;
            if errors.is_empty() {
                let file = spec
                    .directory
                    .as_ref()
                    .map(|d| d.join(&p.file_name).display().to_string());
                tracing::info!("report {} delivered (try {tries})", spec.name);
                core.reports.update(i, |s| {
                    s.last_delivered_ms = Some(now);
                    s.last_file = file.or(s.last_file.take());
                    s.last_error = None;
                    s.attempts = tries;
                    s.retry_ms = None;
                    s.delivered += 1;
                });
                pending[i] = None;
                continue;
            }
            let error = errors.join("; ");
            let retry = (tries < TRIES)
                .then(|| now + retry_delay(spec.first_retry, tries + 1).as_millis() as u64);
            match retry {
                Some(at) => tracing::warn!(
                    "report {}: delivery failed (try {tries} of {TRIES}, again in {} s): {error}",
                    spec.name,
                    (at - now) / 1000
                ),
                None => tracing::warn!(
                    "report {}: delivery failed {TRIES} times, given up until the next run: {error}",
                    spec.name
                ),
            }
            core.reports.update(i, |s| {
                s.last_error = Some(error.clone());
                s.attempts = tries;
                s.retry_ms = retry;
                if retry.is_none() {
                    s.failed += 1;
                }
            });
            match retry {
                Some(at) => p.due_ms = at,
                None => pending[i] = None,
            }
        }
    }
}

/// Renders the report of the last `window` before `now_ms`.
async fn make(core: &Core, spec: &ReportSpec, now_ms: u64) -> Result<Pending, String> {
    let src = crate::dashboard::DashboardSource(core.clone());
    let view = testmesh_dashboard::view::View {
        span: testmesh_dashboard::view::Span::last(now_ms, spec.window_ms),
        filter: Default::default(),
        compare: None,
        window: Some(spec.window.clone()),
    };
    let doc = testmesh_dashboard::report(&src, &view)
        .await
        .map_err(|e| e.to_string())?;
    let bytes = if spec.pdf {
        tokio::task::spawn_blocking(move || testmesh_dashboard::pdf::to_pdf(&doc))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
    } else {
        testmesh_dashboard::doc::to_html(&doc).into_bytes()
    };
    let stamp = testmesh_dashboard::view::clock(now_ms).replace([' ', ':'], "-");
    Ok(Pending {
        bytes,
        file_name: format!(
            "testmesh-{}-{stamp}.{}",
            spec.name,
            if spec.pdf { "pdf" } else { "html" }
        ),
        to_dir: spec.directory.is_some(),
        to_hook: spec.webhook.is_some(),
        tries: 0,
        due_ms: 0,
    })
}

/// An error with its causes ("error sending request: connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s = format!("{s}: {c}");
        cause = c.source();
    }
    s
}

/// Tries every target the report has not reached yet; returns what failed.
async fn deliver(
    spec: &ReportSpec,
    p: &mut Pending,
    client: Option<&reqwest::Client>,
) -> Vec<String> {
    let mut errors = Vec::new();
    if p.to_dir
        && let Some(dir) = &spec.directory
    {
        // Written beside, then renamed: a reader never sees half a report.
        let path = dir.join(&p.file_name);
        let part = dir.join(format!(".{}.part", p.file_name));
        let written = async {
            tokio::fs::create_dir_all(dir).await?;
            tokio::fs::write(&part, &p.bytes).await?;
            tokio::fs::rename(&part, &path).await
        }
        .await;
        match written {
            Ok(()) => p.to_dir = false,
            Err(e) => errors.push(format!("directory {}: {e}", dir.display())),
        }
    }
    if p.to_hook
        && let Some(url) = &spec.webhook
    {
        let Some(client) = client else {
            errors.push("webhook: no HTTP client".into());
            return errors;
        };
        let sent = client
            .post(url)
            .header(
                "content-type",
                if spec.pdf {
                    "application/pdf"
                } else {
                    "text/html; charset=utf-8"
                },
            )
            .header("x-testmesh-report", &spec.name)
            .header(
                "content-disposition",
                format!("attachment; filename=\"{}\"", p.file_name),
            )
            .body(p.bytes.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => p.to_hook = false,
            Ok(r) => errors.push(format!("webhook {url}: HTTP {}", r.status())),
            Err(e) => errors.push(format!("webhook {url}: {}", chain(&e))),
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(toml: &str) -> Result<ReportSpec, String> {
        let f: FileReport = toml::from_str(toml).map_err(|e| e.to_string())?;
        f.check(0)
    }

    #[test]
    fn entries_are_checked_and_say_what_to_write() {
        let s = spec("schedule = \"0 6 * * *\"\ndirectory = \"r\"").unwrap();
        assert_eq!(
            (s.name.as_str(), s.window_ms, s.pdf),
            ("report-1", 86_400_000, true)
        );
        // 2026-12-05 14:00 UTC → 2026-12-06 06:00 UTC.
        assert_eq!(next_run(&s, 1_796_479_200_000), Some(1_796_536_800_000));
        for (bad, says) in [
            ("schedule = \"daily\"\ndirectory = \"r\"", "cron syntax"),
            ("schedule = \"0 6 * * *\"", "say where it goes"),
            ("schedule = \"0 6 * * *\"\nwebhook = \"ftp://x\"", "http://"),
            (
                "schedule = \"0 6 * * *\"\ndirectory = \"r\"\nformat = \"doc\"",
                "pdf or html",
            ),
            (
                "schedule = \"0 6 * * *\"\ndirectory = \"r\"\nwindow = \"1y\"",
                "window",
            ),
            (
                "schedule = \"0 6 * * *\"\ndirectory = \"r\"\nname = \"a b\"",
                "name",
            ),
        ] {
            let e = spec(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let s = spec("schedule = \"*/2 * * * * *\"\nwebhook = \"http://h/x\"\nformat = \"html\"\nwindow = \"1h\"\nname = \"hourly\"").unwrap();
        assert_eq!(next_run(&s, 1_000), Some(2_000));
        assert!(!s.pdf);
    }

    #[test]
    fn retries_back_off() {
        let d: Vec<u64> = (2..=TRIES)
            .map(|n| retry_delay(FIRST_RETRY, n).as_secs())
            .collect();
        assert_eq!(d, vec![30, 60, 120, 240, 480]);
    }
}
