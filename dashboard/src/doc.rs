//! What pages and reports are made of: sections of text, charts and tables. The same sections
//! become a dashboard page, the HTML report or the PDF report (see [`crate::pdf`]).

use std::fmt::Write;

use crate::esc;
use crate::views::Table;

#[derive(Debug, Clone)]
pub enum Block {
    Text(String),
    /// A chart by name (`/dashboard/charts/NAME.svg`) with its SVG.
    Chart {
        name: String,
        svg: String,
    },
    Table(Table),
}

#[derive(Debug, Clone)]
pub struct Section {
    pub id: String,
    pub title: String,
    pub blocks: Vec<Block>,
}

impl Section {
    pub fn new(id: &str, title: &str) -> Section {
        Section {
            id: id.to_string(),
            title: title.to_string(),
            blocks: Vec::new(),
        }
    }

    pub fn text(mut self, t: impl Into<String>) -> Section {
        self.blocks.push(Block::Text(t.into()));
        self
    }

    pub fn chart(mut self, name: &str, svg: String) -> Section {
        self.blocks.push(Block::Chart {
            name: name.to_string(),
            svg,
        });
        self
    }

    pub fn table(mut self, t: Table) -> Section {
        self.blocks.push(Block::Table(t));
        self
    }
}

/// A whole report (or page body): a title, a line under it, sections.
#[derive(Debug, Clone, Default)]
pub struct Document {
    pub title: String,
    pub subtitle: String,
    pub sections: Vec<Section>,
}

/// The sections as HTML: charts inline (so their tooltips work) and marked for live reloads.
pub fn sections_html(h: &mut String, sections: &[Section]) {
    for s in sections {
        let _ = write!(h, "<section id={}><h2>{}</h2>", s.id, esc(&s.title));
        for b in &s.blocks {
            match b {
                Block::Text(t) => {
                    let _ = write!(h, "<p>{}</p>", esc(t));
                }
                Block::Chart { name, svg } => {
                    let _ = write!(
                        h,
                        "<figure class=chart data-chart={name}>{}<figcaption><a href='/dashboard/charts/{name}.svg'>SVG</a> · <a href='/dashboard/charts/{name}.png'>PNG</a></figcaption></figure>",
                        strip_prolog(svg)
                    );
                }
                Block::Table(t) => table_html(h, t),
            }
        }
        h.push_str("</section>");
    }
}

/// An SVG embedded in HTML must not carry an XML declaration.
fn strip_prolog(svg: &str) -> &str {
    match svg.find("<svg") {
        Some(i) => &svg[i..],
        None => svg,
    }
}

pub fn table_html(h: &mut String, t: &Table) {
    let _ = write!(h, "<table id={}><tr>", t.id);
    for c in &t.columns {
        let _ = write!(h, "<th>{}</th>", esc(c));
    }
    h.push_str("</tr>");
    if t.rows.is_empty() {
        let _ = write!(h, "<tr><td colspan={}>none</td></tr>", t.columns.len());
    }
    for r in &t.rows {
        h.push_str("<tr>");
        for c in r {
            let _ = write!(h, "<td>{}</td>", esc(c));
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
}

/// A self-contained HTML file: no script, no external request.
pub fn to_html(d: &Document) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content='width=device-width,initial-scale=1'><title>{}</title><style>{}section{{page-break-inside:avoid}}figcaption{{display:none}}</style></head><body><h1>{}</h1><p>{}</p>",
        esc(&d.title),
        crate::STYLE,
        esc(&d.title),
        esc(&d.subtitle)
    );
    sections_html(&mut h, &d.sections);
    h.push_str("</body></html>\n");
    h
}
