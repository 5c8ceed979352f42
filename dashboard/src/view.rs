//! What a page shows: the time window (`?window=`, `?from=&to=`, or the span of the data),
//! the filters and the sort order, all kept in the URL so a view can be shared. Parsing lives
//! here (the form that edits a view is `picker`); the pages and charts read the resolved
//! [`View`].

use std::fmt::Write;

/// How far back the time charts look by default.
pub const WINDOW_MS: u64 = 3_600_000;
/// Longest window a chart or report may ask for.
pub const MAX_WINDOW_MS: u64 = 30 * 24 * 3_600_000;
/// Shortest window: a fresh cluster's few seconds of data still get an axis.
pub const MIN_WINDOW_MS: u64 = 10_000;
/// The picker's choices.
pub const PRESETS: [&str; 5] = ["15m", "1h", "6h", "24h", "7d"];

/// A stretch of time a chart covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub end_ms: u64,
    pub len_ms: u64,
    /// Ends now (the axis reads "ago"); false for a window in the past.
    pub live: bool,
}

impl Span {
    /// The last `len_ms` before `now_ms`.
    pub fn last(now_ms: u64, len_ms: u64) -> Span {
        Span {
            end_ms: now_ms,
            len_ms: len_ms.max(1),
            live: true,
        }
    }

    pub fn start_ms(&self) -> u64 {
        self.end_ms.saturating_sub(self.len_ms)
    }

    /// Milliseconds per axis unit and the unit's name: seconds for short windows, minutes up
    /// to six hours, hours beyond.
    pub fn unit(&self) -> (f64, &'static str) {
        match self.len_ms {
            0..=180_000 => (1_000.0, "s"),
            180_001..=21_600_000 => (60_000.0, "min"),
            _ => (3_600_000.0, "h"),
        }
    }

    /// The axis value of `t`: units before the end (negative).
    pub fn x(&self, t_ms: u64) -> f64 {
        -(self.end_ms.saturating_sub(t_ms) as f64) / self.unit().0
    }

    /// The axis' left end.
    pub fn left(&self) -> f64 {
        -(self.len_ms as f64) / self.unit().0
    }

    /// The x axis description.
    pub fn desc(&self) -> String {
        let unit = match self.unit().1 {
            "s" => "seconds",
            "min" => "minutes",
            _ => "hours",
        };
        if self.live {
            format!("{unit} ago")
        } else {
            format!("{unit} before {} UTC", clock(self.end_ms))
        }
    }

    /// A caption's time part: "last 40 s", or the range.
    pub fn caption(&self) -> String {
        if self.live {
            format!("last {}", human(self.len_ms))
        } else {
            format!("{} – {} UTC", clock(self.start_ms()), clock(self.end_ms))
        }
    }

    /// How long before the end `t_ms` was, in words ("12 s", "3.5 min").
    pub fn before(&self, t_ms: u64) -> String {
        let (per, unit) = self.unit();
        let v = self.end_ms.saturating_sub(t_ms) as f64 / per;
        let when = if v < 10.0 {
            format!("{v:.1} {unit}")
        } else {
            format!("{v:.0} {unit}")
        };
        if self.live {
            format!("{when} ago")
        } else {
            format!("{when} before the end")
        }
    }

    /// Attributes on a chart's root element that the zoom script reads: the window and the
    /// plot area's pixel extent.
    pub fn attributes(&self, x0: i32, x1: i32) -> String {
        format!(
            " data-from='{}' data-to='{}' data-x0='{x0}' data-x1='{x1}'",
            self.start_ms(),
            self.end_ms
        )
    }
}

/// `2026-12-05 14:03:07` for Unix milliseconds (UTC).
pub fn clock(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    s.trim_end_matches('Z').replace('T', " ")
}

/// `40 s`, `15 min`, `6 h`, `7 d`.
pub fn human(ms: u64) -> String {
    match ms {
        0..120_000 => format!("{} s", ms / 1000),
        120_000..7_200_000 => format!("{} min", ms / 60_000),
        7_200_000..172_800_000 => format!("{} h", ms / 3_600_000),
        _ => format!("{} d", ms / 86_400_000),
    }
}

/// `90s`, `30m`, `2h`, `7d` as milliseconds.
pub fn parse_window(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: write a number and a unit, e.g. 30m, 2h, 7d"))?;
    let ms = match unit {
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{s:?}: the unit is one of s, m, h, d (e.g. 30m)")),
    };
    let total = n.saturating_mul(ms);
    if total == 0 || total > MAX_WINDOW_MS {
        return Err(format!("{s:?}: between 1s and 30d"));
    }
    Ok(total)
}

/// A time in a URL: Unix milliseconds, or `YYYY-MM-DD HH:MM[:SS]` in UTC (a `T` works too).
pub fn parse_time(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let mut t = s.replace('T', " ").trim_end_matches('Z').to_string();
    if t.len() == 16 {
        t.push_str(":00");
    }
    humantime::parse_rfc3339_weak(&t)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .ok_or_else(|| {
            format!("{s:?}: write Unix milliseconds or a UTC time like 2026-12-05 14:30")
        })
}

/// Which workers and tasks a page shows, and in which order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// `key=value` of a worker label.
    pub label: Option<(String, String)>,
    /// A GPU model, or part of one (`A100`).
    pub gpu: Option<String>,
    /// A worker state (`active`, `draining`, …) or a task state (`pending`, `running`, …).
    pub state: Option<String>,
    /// Part of a task name.
    pub name: Option<String>,
    pub sort: Sort,
}

/// Row order of the heatmaps and worker tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Sort {
    /// By worker name.
    #[default]
    Name,
    /// Busiest first (mean of the shown metric over the window).
    Busy,
    /// Idlest first.
    Idle,
}

impl Sort {
    pub const ALL: [(Sort, &str); 3] = [
        (Sort::Name, "name"),
        (Sort::Busy, "busy"),
        (Sort::Idle, "idle"),
    ];

    fn parse(s: &str) -> Result<Sort, String> {
        Sort::ALL
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(x, _)| *x)
            .ok_or_else(|| format!("sort={s:?}: one of name, busy, idle"))
    }

    pub fn name(self) -> &'static str {
        Sort::ALL
            .iter()
            .find(|(x, _)| *x == self)
            .map_or("name", |(_, n)| n)
    }
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.label.is_none() && self.gpu.is_none() && self.state.is_none() && self.name.is_none()
    }

    /// Whether a worker with these labels, GPU models and state is shown.
    pub fn worker(
        &self,
        labels: &std::collections::BTreeMap<String, String>,
        gpus: &[&str],
        state: &str,
    ) -> bool {
        self.label
            .as_ref()
            .is_none_or(|(k, v)| labels.get(k).is_some_and(|x| x == v))
            && self.gpu.as_ref().is_none_or(|g| {
                let g = g.to_lowercase();
                gpus.iter().any(|m| m.to_lowercase().contains(&g))
            })
            && self
                .state
                .as_ref()
                .is_none_or(|s| !is_worker_state(s) || s == state)
    }

    /// Whether a task name is shown (the name filter alone).
    pub fn named(&self, name: &str) -> bool {
        self.name
            .as_ref()
            .is_none_or(|n| name.to_lowercase().contains(&n.to_lowercase()))
    }

    /// Whether a task with this name and state is shown.
    pub fn task(&self, name: &str, state: &str) -> bool {
        self.name
            .as_ref()
            .is_none_or(|n| name.to_lowercase().contains(&n.to_lowercase()))
            && self
                .state
                .as_ref()
                .is_none_or(|s| is_worker_state(s) || s == state)
    }
}

const WORKER_STATES: [&str; 4] = ["active", "draining", "lost", "left"];

fn is_worker_state(s: &str) -> bool {
    WORKER_STATES.contains(&s)
}

/// A page's query string, as the browser sends it.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewQuery {
    /// How far back, e.g. `1h`.
    pub window: Option<String>,
    /// The same, the name the reports used first.
    pub since: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub label: Option<String>,
    pub gpu: Option<String>,
    pub state: Option<String>,
    pub name: Option<String>,
    pub sort: Option<String>,
    /// `1d` or `7d`: the same window that long before, side by side.
    pub compare: Option<String>,
    /// Cache-buster added by the live script; ignored.
    #[serde(rename = "t")]
    pub _t: Option<String>,
    /// A browser's first visit with the API token (`/?token=…`); the node's access guard
    /// reads it, the view ignores it (and never puts it in links).
    #[serde(rename = "token")]
    pub _token: Option<String>,
}

/// What a page was asked to show, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub span: Span,
    pub filter: Filter,
    /// Milliseconds to look back for the comparison.
    pub compare: Option<u64>,
    /// The window the URL names (for links); None when it fits the data.
    pub window: Option<String>,
}

/// What the query says, `now` and when the data starts (for the default window).
pub fn resolve(q: &ViewQuery, now_ms: u64, first_data_ms: Option<u64>) -> Result<View, String> {
    fn some(v: &Option<String>) -> Option<&str> {
        v.as_deref().map(str::trim).filter(|s| !s.is_empty())
    }
    let from = some(&q.from)
        .map(parse_time)
        .transpose()
        .map_err(|e| format!("from: {e}"))?;
    let to = some(&q.to)
        .map(parse_time)
        .transpose()
        .map_err(|e| format!("to: {e}"))?;
    let named = some(&q.window).or(some(&q.since));
    let len = named
        .map(parse_window)
        .transpose()
        .map_err(|e| format!("window: {e}"))?;
    let span = match (from, to) {
        (Some(f), t) => {
            let end = t.unwrap_or(now_ms).min(now_ms);
            if f >= end {
                return Err("from: must be before `to` (and before now)".into());
            }
            if end - f > MAX_WINDOW_MS {
                return Err("from/to: at most 30 days apart".into());
            }
            Span {
                end_ms: end,
                len_ms: (end - f).max(1_000),
                live: t.is_none_or(|t| t >= now_ms),
            }
        }
        (None, Some(t)) => {
            let end = t.min(now_ms);
            Span {
                end_ms: end,
                len_ms: len.unwrap_or(WINDOW_MS),
                live: t >= now_ms,
            }
        }
        (None, None) => Span::last(now_ms, len.unwrap_or_else(|| fit(now_ms, first_data_ms))),
    };
    let label = some(&q.label)
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| format!("label={l:?}: write key=value, e.g. label=pool=gpu"))
        })
        .transpose()?;
    let state = some(&q.state).map(str::to_lowercase);
    if let Some(s) = &state {
        let task_states = testmesh_consensus::task::TaskState::ALL.map(|t| t.to_string());
        if !is_worker_state(s) && !task_states.iter().any(|t| t == s) {
            return Err(format!(
                "state={s:?}: a worker state ({}) or a task state ({})",
                WORKER_STATES.join(", "),
                task_states.join(", ")
            ));
        }
    }
    let compare = some(&q.compare)
        .map(|c| match c {
            "1d" => Ok(86_400_000),
            "7d" => Ok(7 * 86_400_000),
            _ => Err(format!("compare={c:?}: 1d or 7d")),
        })
        .transpose()?;
    Ok(View {
        span,
        filter: Filter {
            label,
            gpu: some(&q.gpu).map(str::to_string),
            state,
            name: some(&q.name).map(str::to_string),
            sort: some(&q.sort)
                .map(Sort::parse)
                .transpose()?
                .unwrap_or_default(),
        },
        compare,
        window: named.map(str::to_string),
    })
}

/// The default window: an hour, or the span of the data when that is shorter.
pub fn fit(now_ms: u64, first_data_ms: Option<u64>) -> u64 {
    first_data_ms.map_or(WINDOW_MS, |f| {
        now_ms.saturating_sub(f).clamp(MIN_WINDOW_MS, WINDOW_MS)
    })
}

impl View {
    /// The view's query string (without `?`), for links and the live script.
    pub fn query(&self) -> String {
        let mut p: Vec<(&str, String)> = Vec::new();
        if !self.span.live {
            p.push(("from", self.span.start_ms().to_string()));
            p.push(("to", self.span.end_ms.to_string()));
        } else if let Some(w) = &self.window {
            p.push(("window", w.clone()));
        }
        let f = &self.filter;
        if let Some((k, v)) = &f.label {
            p.push(("label", format!("{k}={v}")));
        }
        for (k, v) in [("gpu", &f.gpu), ("state", &f.state), ("name", &f.name)] {
            if let Some(v) = v {
                p.push((k, v.clone()));
            }
        }
        if f.sort != Sort::Name {
            p.push(("sort", f.sort.name().to_string()));
        }
        if let Some(c) = self.compare {
            p.push(("compare", format!("{}d", c / 86_400_000)));
        }
        p.iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// Percent-encodes a query value.
fn encode(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> ViewQuery {
        let s = pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        serde_urlencoded::from_str(&s).unwrap()
    }

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn windows_parse_with_units_and_bad_ones_say_what_to_write() {
        assert_eq!(parse_window("90s"), Ok(90_000));
        assert_eq!(parse_window("30m"), Ok(1_800_000));
        assert_eq!(parse_window("2h"), Ok(7_200_000));
        assert!(parse_window("2").unwrap_err().contains("unit"));
        assert!(parse_window("h").unwrap_err().contains("number"));
        assert!(parse_window("0s").is_err());
        assert!(parse_window("31d").unwrap_err().contains("30d"));
    }

    #[test]
    fn the_default_window_fits_short_data_and_stops_at_an_hour() {
        let v = resolve(&q(&[]), NOW, Some(NOW - 40_000)).unwrap();
        assert_eq!(v.span, Span::last(NOW, 40_000));
        assert_eq!(v.span.unit().1, "s");
        let v = resolve(&q(&[]), NOW, Some(NOW - 5 * WINDOW_MS)).unwrap();
        assert_eq!(v.span.len_ms, WINDOW_MS);
        assert_eq!(resolve(&q(&[]), NOW, None).unwrap().span.len_ms, WINDOW_MS);
        assert_eq!(
            resolve(&q(&[]), NOW, Some(NOW)).unwrap().span.len_ms,
            MIN_WINDOW_MS
        );
        // A named window wins over the fit, and comes back in the query string.
        let v = resolve(&q(&[("window", "6h")]), NOW, Some(NOW - 1000)).unwrap();
        assert_eq!(v.span.len_ms, 6 * 3_600_000);
        assert_eq!(v.query(), "window=6h");
    }

    #[test]
    fn from_and_to_make_a_past_window_and_bad_ones_are_refused() {
        let v = resolve(
            &q(&[("from", "2026-12-05 14:00"), ("to", "2026-12-05T14:30:00Z")]),
            NOW,
            None,
        )
        .unwrap();
        assert_eq!(v.span.len_ms, 1_800_000);
        assert!(!v.span.live);
        assert_eq!(clock(v.span.end_ms), "2026-12-05 14:30:00");
        assert!(v.span.desc().contains("before 2026-12-05 14:30:00 UTC"));
        let back = resolve(&serde_urlencoded::from_str(&v.query()).unwrap(), NOW, None).unwrap();
        assert_eq!(back, v, "the query string round-trips");
        for (bad, says) in [
            (vec![("from", "yesterday")], "UTC time"),
            (vec![("from", "2000"), ("to", "1000")], "before"),
            (vec![("window", "5")], "unit"),
            (vec![("label", "gpu")], "key=value"),
            (vec![("state", "sleeping")], "task state"),
            (vec![("sort", "random")], "name, busy, idle"),
            (vec![("compare", "2d")], "1d or 7d"),
        ] {
            let e = resolve(&q(&bad), NOW, None).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn filters_pick_workers_and_tasks_and_round_trip() {
        let v = resolve(
            &q(&[
                ("label", "pool=gpu"),
                ("gpu", "a100"),
                ("state", "active"),
                ("sort", "busy"),
            ]),
            NOW,
            None,
        )
        .unwrap();
        let labels = [("pool".to_string(), "gpu".to_string())].into();
        assert!(v.filter.worker(&labels, &["Sim A100"], "active"));
        assert!(!v.filter.worker(&labels, &["H100"], "active"));
        assert!(
            !v.filter
                .worker(&Default::default(), &["Sim A100"], "active")
        );
        assert!(!v.filter.worker(&labels, &["Sim A100"], "draining"));
        // A worker state does not hide tasks.
        assert!(v.filter.task("anything", "running"));
        let t = resolve(&q(&[("name", "Train"), ("state", "pending")]), NOW, None).unwrap();
        assert!(t.filter.task("nightly-train-3", "pending"));
        assert!(!t.filter.task("nightly-train-3", "running"));
        assert!(t.filter.worker(&Default::default(), &[], "lost"));
        assert_eq!(
            v.query(),
            "label=pool%3Dgpu&gpu=a100&state=active&sort=busy"
        );
        // The token of a first visit is accepted and never copied into links.
        let t = resolve(&q(&[("token", "tm_secret"), ("window", "1h")]), NOW, None).unwrap();
        assert_eq!(t.query(), "window=1h");
    }

    #[test]
    fn the_axis_unit_follows_the_window() {
        let s = Span::last(NOW, 40_000);
        assert_eq!(s.x(NOW - 20_000), -20.0);
        assert_eq!(s.left(), -40.0);
        assert_eq!(s.desc(), "seconds ago");
        assert_eq!(s.caption(), "last 40 s");
        assert_eq!(Span::last(NOW, 3_600_000).desc(), "minutes ago");
        assert_eq!(Span::last(NOW, 86_400_000).unit().1, "h");
    }
}
