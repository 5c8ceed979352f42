//! A [`Document`] as a PDF: the sections are laid out on A4 pages drawn as SVG (text, the
//! charts' own SVG, tables), and each page goes through svg2pdf with the embedded font, so the
//! text stays text (searchable, `pdftotext` reads it).

use std::collections::HashMap;
use std::fmt::Write;

use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, TextStr};
use resvg::usvg;

use crate::doc::{Block, Document};
use crate::esc;
use crate::export::{ExportError, options};
use crate::views::Table;

/// A4 in points.
const W: f32 = 595.0;
const H: f32 = 842.0;
const MARGIN: f32 = 40.0;
const BODY: f32 = 9.0;
const SMALL: f32 = 7.0;
/// DejaVu Sans averages a little over half an em per character.
const CHAR_EM: f32 = 0.56;

struct Pages {
    done: Vec<String>,
    page: String,
    y: f32,
}

impl Pages {
    fn new() -> Pages {
        let mut p = Pages {
            done: Vec::new(),
            page: String::new(),
            y: 0.0,
        };
        p.start();
        p
    }

    fn start(&mut self) {
        self.page.clear();
        let _ = write!(
            self.page,
            "<svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{H}' viewBox='0 0 {W} {H}'><rect width='{W}' height='{H}' fill='white'/>"
        );
        self.y = MARGIN;
    }

    fn finish_page(&mut self) {
        let n = self.done.len() + 1;
        let _ = write!(
            self.page,
            "<text x='{}' y='{}' font-size='{SMALL}' fill='#666' text-anchor='end'>testmesh report · page {n}</text></svg>",
            W - MARGIN,
            H - MARGIN / 2.0
        );
        self.done.push(std::mem::take(&mut self.page));
        self.start();
    }

    /// Makes room for `h` points, starting a page when this one is full.
    fn room(&mut self, h: f32) {
        if self.y + h > H - MARGIN && self.y > MARGIN {
            self.finish_page();
        }
    }

    fn text(&mut self, t: &str, size: f32, colour: &str) {
        for line in wrap(t, ((W - 2.0 * MARGIN) / (size * CHAR_EM)) as usize) {
            self.room(size * 1.4);
            self.y += size * 1.4;
            let _ = write!(
                self.page,
                "<text x='{MARGIN}' y='{:.1}' font-size='{size}' fill='{colour}'>{}</text>",
                self.y,
                esc(&line)
            );
        }
    }

    fn chart(&mut self, svg: &str) -> Result<(), ExportError> {
        let (scale, h) = chart_size(svg)?;
        self.room(h + 6.0);
        self.y += 6.0;
        // The chart's own SVG, nested and scaled into place.
        let inner = &svg[svg.find("<svg").unwrap_or(0)..];
        let _ = write!(
            self.page,
            "<g transform='translate({MARGIN} {:.1}) scale({scale:.4})'>{inner}</g>",
            self.y
        );
        self.y += h;
        Ok(())
    }

    fn table(&mut self, t: &Table) {
        let width = W - 2.0 * MARGIN;
        let chars = (width / (SMALL * CHAR_EM)) as usize;
        // Columns share the width by their longest cell, each at least a few characters.
        let longest: Vec<usize> = (0..t.columns.len())
            .map(|c| {
                t.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .chain([&t.columns[c]])
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(1)
                    .clamp(4, 60)
            })
            .collect();
        let total: usize = longest.iter().sum::<usize>().max(1);
        let widths: Vec<usize> = longest.iter().map(|l| (l * chars / total).max(3)).collect();
        let line = SMALL * 1.5;
        let header: Vec<String> = t.columns.clone();
        let none = vec![vec!["none".to_string()]];
        let rows = if t.rows.is_empty() { &none } else { &t.rows };
        self.row(&header, &widths, line, true);
        for r in rows {
            if self.y + line > H - MARGIN {
                self.finish_page();
                self.row(&header, &widths, line, true);
            }
            self.row(r, &widths, line, false);
        }
        self.y += 4.0;
    }

    fn row(&mut self, cells: &[String], widths: &[usize], line: f32, bold: bool) {
        self.room(line);
        self.y += line;
        let mut x = MARGIN;
        for (cell, w) in cells.iter().zip(widths) {
            let _ = write!(
                self.page,
                "<text x='{x:.1}' y='{:.1}' font-size='{SMALL}' fill='{}'>{}</text>",
                self.y,
                if bold { "#000" } else { "#333" },
                esc(&clip(cell, w.saturating_sub(1)))
            );
            x += *w as f32 * SMALL * CHAR_EM;
        }
        let _ = write!(
            self.page,
            "<line x1='{MARGIN}' x2='{}' y1='{:.1}' y2='{:.1}' stroke='#ddd' stroke-width='0.5'/>",
            W - MARGIN,
            self.y + 2.5,
            self.y + 2.5
        );
    }
}

/// The scale that fits a chart on the page, and its height there.
fn chart_size(svg: &str) -> Result<(f32, f32), ExportError> {
    let size = usvg::Tree::from_str(svg, options())?.size();
    let width = W - 2.0 * MARGIN;
    let max_h = H - 2.0 * MARGIN - 40.0;
    let scale = (width / size.width()).min(max_h / size.height());
    Ok((scale, size.height() * scale))
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n.saturating_sub(1)).chain(['…']).collect()
    }
}

/// Greedy word wrap at `n` characters; words longer than a line are cut.
fn wrap(t: &str, n: usize) -> Vec<String> {
    let n = n.max(10);
    let mut out = Vec::new();
    let mut cur = String::new();
    for word in t.split_whitespace() {
        let mut word: String = word.to_string();
        while word.chars().count() > n {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            out.push(word.chars().take(n).collect());
            word = word.chars().skip(n).collect();
        }
        if !cur.is_empty() && cur.chars().count() + 1 + word.chars().count() > n {
            out.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(&word);
    }
    if !cur.is_empty() || out.is_empty() {
        out.push(cur);
    }
    out
}

/// The pages of `d` as SVG documents.
pub fn pages(d: &Document) -> Result<Vec<String>, ExportError> {
    let mut p = Pages::new();
    p.text(&d.title, 18.0, "#000");
    p.text(&d.subtitle, BODY, "#444");
    for s in &d.sections {
        // A heading never sits alone at the bottom of a page: it goes with its first chart.
        let first = match s.blocks.first() {
            Some(Block::Chart { svg, .. }) => chart_size(svg)?.1,
            _ => 40.0,
        };
        p.room(30.0 + first);
        p.y += 8.0;
        p.text(&s.title, 13.0, "#000");
        for b in &s.blocks {
            match b {
                Block::Text(t) => p.text(t, BODY, "#222"),
                Block::Chart { svg, .. } => p.chart(svg)?,
                Block::Table(t) => p.table(t),
            }
        }
    }
    p.finish_page();
    Ok(p.done)
}

/// The document as a PDF file.
pub fn to_pdf(d: &Document) -> Result<Vec<u8>, ExportError> {
    let pages = pages(d)?;
    let mut alloc = Ref::new(1);
    let catalog = alloc.bump();
    let tree_id = alloc.bump();
    let info = alloc.bump();
    let mut pdf = Pdf::new();
    let mut kids = Vec::new();
    for svg in &pages {
        let tree = usvg::Tree::from_str(svg, options())?;
        let (chunk, root) = svg2pdf::to_chunk(&tree, svg2pdf::ConversionOptions::default())
            .map_err(|e| ExportError::Encode(e.to_string()))?;
        let mut map = HashMap::new();
        let chunk = chunk.renumber(|old| *map.entry(old).or_insert_with(|| alloc.bump()));
        let root = map[&root];
        let page_id = alloc.bump();
        let content_id = alloc.bump();
        let mut page = pdf.page(page_id);
        page.media_box(Rect::new(0.0, 0.0, W, H));
        page.parent(tree_id);
        page.contents(content_id);
        page.resources().x_objects().pair(Name(b"P"), root);
        page.finish();
        let mut c = Content::new();
        // The page's XObject is one point square: stretch it over the page.
        c.transform([W, 0.0, 0.0, H, 0.0, 0.0]).x_object(Name(b"P"));
        pdf.stream(content_id, &c.finish());
        pdf.extend(&chunk);
        kids.push(page_id);
    }
    pdf.catalog(catalog).pages(tree_id);
    let n = kids.len() as i32;
    pdf.pages(tree_id).kids(kids).count(n);
    pdf.document_info(info)
        .title(TextStr(&d.title))
        .producer(TextStr("testmesh"));
    Ok(pdf.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::Section;

    #[test]
    fn words_wrap_and_long_ones_are_cut() {
        assert_eq!(wrap("a bb ccc", 10), vec!["a bb ccc"]);
        let w = wrap(&"x".repeat(25), 10);
        assert_eq!(w, vec!["x".repeat(10), "x".repeat(10), "x".repeat(5)]);
        assert_eq!(wrap("", 10), vec![""]);
    }

    #[test]
    fn a_long_table_runs_over_pages_and_every_page_parses() {
        let mut t = Table::new("t", &["name", "value"]);
        for i in 0..200 {
            t.row(vec![format!("row {i} <&>"), i.to_string()]);
        }
        let d = Document {
            title: "t".into(),
            subtitle: "s".into(),
            sections: vec![Section::new("a", "A").text("hello").table(t)],
        };
        let pages = pages(&d).unwrap();
        assert!(pages.len() >= 2, "{} pages", pages.len());
        for p in &pages {
            usvg::Tree::from_str(p, options()).unwrap();
        }
        let pdf = to_pdf(&d).unwrap();
        assert!(pdf.starts_with(b"%PDF-"));
    }
}
