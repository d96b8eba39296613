//! A small SVG writer: shapes, text and a linear 0–100 % axes frame. No dependency.

use std::fmt::Write;

/// Okabe–Ito colours (distinguishable with colour-vision deficiencies), then greys.
pub const PALETTE: [&str; 10] =
    ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000", "#777777", "#BBBBBB"];

pub fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

pub struct Svg {
    w: f64,
    h: f64,
    body: String,
}

impl Svg {
    pub fn new(w: f64, h: f64) -> Self {
        let mut s = Self { w, h, body: String::new() };
        s.rect(0.0, 0.0, w, h, "#ffffff", None);
        s
    }

    pub fn line(&mut self, (x1, y1): (f64, f64), (x2, y2): (f64, f64), stroke: &str, width: f64, dash: Option<&str>) {
        let dash = dash.map(|d| format!(r#" stroke-dasharray="{d}""#)).unwrap_or_default();
        let _ = writeln!(
            self.body,
            r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{stroke}" stroke-width="{width}"{dash}/>"#
        );
    }

    pub fn polyline(&mut self, pts: &[(f64, f64)], stroke: &str, width: f64) {
        let p: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let _ = writeln!(self.body, r#"<polyline points="{}" fill="none" stroke="{stroke}" stroke-width="{width}"/>"#, p.join(" "));
    }

    pub fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: &str, stroke: Option<&str>) {
        let stroke = stroke.map(|s| format!(r#" stroke="{s}""#)).unwrap_or_default();
        let _ = writeln!(self.body, r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="{fill}"{stroke}/>"#);
    }

    pub fn circle(&mut self, (cx, cy): (f64, f64), r: f64, fill: &str) {
        let _ = writeln!(self.body, r##"<circle cx="{cx:.1}" cy="{cy:.1}" r="{r}" fill="{fill}" stroke="#000000" stroke-width="0.6"/>"##);
    }

    /// `anchor`: start, middle or end; `rotate`: degrees about the anchor point.
    pub fn text(&mut self, (x, y): (f64, f64), s: &str, size: f64, anchor: &str, rotate: Option<f64>) {
        let rot = rotate.map(|r| format!(r#" transform="rotate({r} {x:.1} {y:.1})""#)).unwrap_or_default();
        let _ = writeln!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" font-family="Helvetica, Arial, sans-serif" font-size="{size}" text-anchor="{anchor}"{rot}>{}</text>"#,
            esc(s)
        );
    }

    pub fn finish(self) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\n{}</svg>\n",
            self.body,
            w = self.w,
            h = self.h
        )
    }
}

/// A plot area mapping data coordinates to pixels, both axes linear.
pub struct Axes {
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
    pub x: (f64, f64),
    pub y: (f64, f64),
}

impl Axes {
    pub fn at(&self, x: f64, y: f64) -> (f64, f64) {
        let px = self.left + (x - self.x.0) / (self.x.1 - self.x.0) * self.width;
        let py = self.top + self.height - (y - self.y.0) / (self.y.1 - self.y.0) * self.height;
        (px, py)
    }

    /// Frame, grid, ticks every `step` on both axes and the axis titles.
    pub fn draw(&self, svg: &mut Svg, step: (f64, f64), x_title: &str, y_title: &str) {
        svg.rect(self.left, self.top, self.width, self.height, "#ffffff", Some("#333333"));
        let mut v = self.x.0;
        while v <= self.x.1 + 1e-9 {
            let (px, _) = self.at(v, self.y.0);
            svg.line((px, self.top), (px, self.top + self.height), "#e5e5e5", 1.0, None);
            svg.text((px, self.top + self.height + 16.0), &format!("{v}"), 11.0, "middle", None);
            v += step.0;
        }
        let mut v = self.y.0;
        while v <= self.y.1 + 1e-9 {
            let (_, py) = self.at(self.x.0, v);
            svg.line((self.left, py), (self.left + self.width, py), "#e5e5e5", 1.0, None);
            svg.text((self.left - 6.0, py + 4.0), &format!("{v}"), 11.0, "end", None);
            v += step.1;
        }
        svg.rect(self.left, self.top, self.width, self.height, "none", Some("#333333"));
        svg.text((self.left + self.width / 2.0, self.top + self.height + 36.0), x_title, 13.0, "middle", None);
        let (yx, yy) = (self.left - 40.0, self.top + self.height / 2.0);
        svg.text((yx, yy), y_title, 13.0, "middle", Some(-90.0));
    }
}
