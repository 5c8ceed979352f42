//! The range picker and filter form above every view page, and the drag-to-zoom script.

use std::fmt::Write;

use crate::esc;
use crate::view::{PRESETS, Sort, View, clock};

impl View {
    /// The range picker and filter form shown above every page's charts.
    pub fn picker(&self, filters: bool) -> String {
        let mut h = String::from(
            "<form id=view class=view method=get><label>window <select name=window onchange='this.form.from.value=\"\";this.form.to.value=\"\";this.form.submit()'>",
        );
        let chosen = self.window.as_deref().filter(|_| self.span.live);
        let _ = write!(
            h,
            "<option value=''{}>fit the data</option>",
            if chosen.is_none() && self.span.live {
                " selected"
            } else {
                ""
            }
        );
        for p in PRESETS {
            let _ = write!(
                h,
                "<option{}>{p}</option>",
                if chosen == Some(p) { " selected" } else { "" }
            );
        }
        let (from, to) = if self.span.live {
            (String::new(), String::new())
        } else {
            (clock(self.span.start_ms()), clock(self.span.end_ms))
        };
        let _ = write!(
            h,
            "</select></label> <label>from <input name=from size=19 placeholder='UTC, e.g. {}' value='{}'></label> <label>to <input name=to size=19 placeholder=now value='{}'></label>",
            clock(self.span.start_ms()),
            esc(&from),
            esc(&to)
        );
        let f = &self.filter;
        if filters {
            let val = |v: &Option<String>| esc(v.as_deref().unwrap_or(""));
            let label = f.label.as_ref().map(|(k, v)| format!("{k}={v}"));
            let _ = write!(
                h,
                " <label>label <input name=label size=12 placeholder=key=value value='{}'></label> <label>GPU <input name=gpu size=8 value='{}'></label> <label>state <input name=state size=8 value='{}'></label> <label>task <input name=name size=10 value='{}'></label> <label>sort <select name=sort>",
                val(&label),
                val(&f.gpu),
                val(&f.state),
                val(&f.name)
            );
            for (s, n) in Sort::ALL {
                let _ = write!(
                    h,
                    "<option{}>{n}</option>",
                    if s == f.sort { " selected" } else { "" }
                );
            }
            h.push_str("</select></label>");
        }
        let _ = write!(
            h,
            " <label>compare <select name=compare><option value=''>no</option><option{}>1d</option><option{}>7d</option></select></label> <button>show</button> <span class=hint>drag across a chart to zoom</span></form>",
            if self.compare == Some(86_400_000) {
                " selected"
            } else {
                ""
            },
            if self.compare == Some(7 * 86_400_000) {
                " selected"
            } else {
                ""
            },
        );
        h
    }
}

/// Drag across a time chart to zoom into that range; empty form fields stay out of the URL.
/// Chart roots carry `data-from`, `data-to` and the plot's pixel extent `data-x0`/`data-x1`.
pub const SCRIPT: &str = r#"
(function () {
  const form = document.getElementById('view');
  if (form) form.addEventListener('submit', () => {
    form.querySelectorAll('input,select').forEach((i) => { if (!i.value) i.disabled = true; });
  });
  let drag = null;
  const box = document.createElement('div');
  box.style.cssText = 'position:absolute;background:rgba(30,120,200,.2);pointer-events:none;display:none';
  document.body.appendChild(box);
  const time = (svg, clientX) => {
    const r = svg.getBoundingClientRect();
    const vb = svg.viewBox && svg.viewBox.baseVal && svg.viewBox.baseVal.width ? svg.viewBox.baseVal.width : r.width;
    const px = (clientX - r.left) * vb / r.width;
    const x0 = Number(svg.dataset.x0), x1 = Number(svg.dataset.x1);
    const f = Math.min(1, Math.max(0, (px - x0) / (x1 - x0)));
    return Number(svg.dataset.from) + f * (Number(svg.dataset.to) - Number(svg.dataset.from));
  };
  document.addEventListener('mousedown', (e) => {
    const svg = e.target.closest && e.target.closest('svg[data-from]');
    if (!svg || e.button !== 0) return;
    e.preventDefault();
    drag = { svg, x: e.clientX };
    const r = svg.getBoundingClientRect();
    Object.assign(box.style, { display: 'block', left: e.clientX + scrollX + 'px', top: r.top + scrollY + 'px', width: '0px', height: r.height + 'px' });
  });
  document.addEventListener('mousemove', (e) => {
    if (!drag) return;
    box.style.left = Math.min(drag.x, e.clientX) + scrollX + 'px';
    box.style.width = Math.abs(e.clientX - drag.x) + 'px';
  });
  document.addEventListener('mouseup', (e) => {
    if (!drag) return;
    const d = drag; drag = null; box.style.display = 'none';
    if (Math.abs(e.clientX - d.x) < 5) return;
    const a = time(d.svg, Math.min(d.x, e.clientX)), b = time(d.svg, Math.max(d.x, e.clientX));
    const u = new URL(location.href);
    u.searchParams.delete('window'); u.searchParams.delete('since');
    u.searchParams.set('from', String(Math.floor(a))); u.searchParams.set('to', String(Math.ceil(b)));
    location.href = u.toString();
  });
})();
"#;
