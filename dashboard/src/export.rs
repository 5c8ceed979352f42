//! SVG to PNG (resvg) with the font embedded in the binary, so a PNG or PDF looks the same on
//! every host, whatever fonts it has installed.

use std::sync::OnceLock;

use resvg::tiny_skia;
use resvg::usvg;

/// DejaVu Sans (Bitstream Vera licence, see `assets/DejaVuSans-LICENSE.txt`).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const FAMILY: &str = "DejaVu Sans";

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("the SVG could not be read: {0}")]
    Svg(#[from] usvg::Error),
    #[error("the image would be empty or too large ({0}×{1} px)")]
    Size(u32, u32),
    #[error("encoding failed: {0}")]
    Encode(String),
}

/// Parse options with the embedded font standing in for every generic family.
pub(crate) fn options() -> &'static usvg::Options<'static> {
    static OPTIONS: OnceLock<usvg::Options<'static>> = OnceLock::new();
    OPTIONS.get_or_init(|| {
        let mut o = usvg::Options {
            font_family: FAMILY.to_string(),
            ..usvg::Options::default()
        };
        let db = o.fontdb_mut();
        db.load_font_data(FONT.to_vec());
        db.set_sans_serif_family(FAMILY);
        db.set_serif_family(FAMILY);
        db.set_monospace_family(FAMILY);
        o
    })
}

/// Largest side of a PNG, in pixels.
const MAX_SIDE: u32 = 8_000;

/// The SVG as a PNG, `scale` times its size (2 suits high-density screens and slides).
pub fn png(svg: &str, scale: f32) -> Result<Vec<u8>, ExportError> {
    let tree = usvg::Tree::from_str(svg, options())?;
    let size = tree.size();
    let (w, h) = (
        (size.width() * scale).ceil() as u32,
        (size.height() * scale).ceil() as u32,
    );
    if w > MAX_SIDE || h > MAX_SIDE {
        return Err(ExportError::Size(w, h));
    }
    let mut pixmap = tiny_skia::Pixmap::new(w, h).ok_or(ExportError::Size(w, h))?;
    pixmap.fill(tiny_skia::Color::WHITE);
    resvg::render(
        &tree,
        tiny_skia::Transform::from_scale(scale, scale),
        &mut pixmap.as_mut(),
    );
    pixmap
        .encode_png()
        .map_err(|e| ExportError::Encode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_becomes_a_png_with_its_text_drawn() {
        let svg = r#"<svg width="200" height="50" viewBox="0 0 200 50" xmlns="http://www.w3.org/2000/svg"><rect width="200" height="50" fill="white"/><text x="10" y="30" font-family="sans-serif" font-size="20">testmesh</text></svg>"#;
        let png = png(svg, 2.0).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let img = tiny_skia::Pixmap::decode_png(&png).unwrap();
        assert_eq!((img.width(), img.height()), (400, 100));
        // The text was drawn with the embedded font: some pixels are dark.
        let dark = img.pixels().iter().filter(|p| p.red() < 100).count();
        assert!(dark > 100, "{dark} dark pixels");
        let blank = svg.replace("testmesh", "");
        let img = tiny_skia::Pixmap::decode_png(&super::png(&blank, 2.0).unwrap()).unwrap();
        assert_eq!(img.pixels().iter().filter(|p| p.red() < 100).count(), 0);
    }

    #[test]
    fn bad_svg_is_an_error_not_a_panic() {
        assert!(matches!(png("<svg", 1.0), Err(ExportError::Svg(_))));
    }
}
