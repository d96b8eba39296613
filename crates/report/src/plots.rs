//! The three plots of a report — safety against utility, ASR against the harmful
//! share per method, and a method × regime heatmap of ASR — drawn with plotters,
//! each as SVG (web, zoomable) and PNG (papers and slides). Text is DejaVu Sans,
//! bundled (assets/, Bitstream Vera licence), so a PNG looks the same on every
//! machine; point labels that would overlap are moved apart, with a leader line.

use std::collections::BTreeMap;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::Row;

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

/// Okabe–Ito colours (distinguishable with colour-vision deficiencies), then greys.
const PALETTE: [RGBColor; 10] = [
    RGBColor(0x00, 0x72, 0xB2),
    RGBColor(0xE6, 0x9F, 0x00),
    RGBColor(0x00, 0x9E, 0x73),
    RGBColor(0xD5, 0x5E, 0x00),
    RGBColor(0xCC, 0x79, 0xA7),
    RGBColor(0x56, 0xB4, 0xE9),
    RGBColor(0xF0, 0xE4, 0x42),
    RGBColor(0x00, 0x00, 0x00),
    RGBColor(0x77, 0x77, 0x77),
    RGBColor(0xBB, 0xBB, 0xBB),
];

fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

type Drawn = Result<(), String>;

fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("plot: {e:?}")
}

/// One plot, drawable on any plotters backend.
enum Plot<'a> {
    SafetyUtility(&'a [Row], &'a str),
    AsrVsPoison(&'a [Row], &'a str),
    Heatmap(&'a [Row], &'a str),
}

impl Plot<'_> {
    fn size(&self) -> (u32, u32) {
        match self {
            Plot::Heatmap(rows, _) => {
                let (methods, regimes) = heat_axes(rows);
                (((250 + 120 * regimes.len()) as u32).max(520), (110 + 38 * methods.len()) as u32)
            }
            _ => (900, 560),
        }
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Drawn {
        area.fill(&WHITE).map_err(err)?;
        match self {
            Plot::SafetyUtility(rows, title) => safety_utility(area, rows, title),
            Plot::AsrVsPoison(rows, title) => asr_vs_poison(area, rows, title),
            Plot::Heatmap(rows, title) => heatmap(area, rows, title),
        }?;
        area.present().map_err(err)
    }

    /// The plot as SVG text and as PNG bytes.
    fn render(&self) -> Result<(Vec<u8>, Vec<u8>), String> {
        register_font();
        let (w, h) = self.size();
        let mut svg = String::new();
        self.draw(&SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area())?;
        let mut rgb = vec![255u8; (w * h * 3) as usize];
        self.draw(&BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area())?;
        let img = image::RgbImage::from_raw(w, h, rgb).ok_or("plot: bitmap size")?;
        let mut png = std::io::Cursor::new(Vec::new());
        img.write_to(&mut png, image::ImageFormat::Png).map_err(err)?;
        Ok((svg.into_bytes(), png.into_inner()))
    }
}

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The bundled font is valid; a failure here would show as missing text, not a crash.
        let _ = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

/// `(file name, bytes)` for every plot the rows support, each as .svg and .png.
pub fn all(rows: &[Row], title: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut plots = vec![("safety_utility", Plot::SafetyUtility(rows, title))];
    if rows.iter().any(|r| r.poison_ratio.is_some()) {
        plots.push(("asr_vs_poison", Plot::AsrVsPoison(rows, title)));
        plots.push(("heatmap", Plot::Heatmap(rows, title)));
    }
    let mut out = Vec::new();
    for (name, plot) in plots {
        let (svg, png) = plot.render()?;
        out.push((format!("{name}.svg"), svg));
        out.push((format!("{name}.png"), png));
    }
    Ok(out)
}

/// The safety-against-utility scatter of `rows` alone, as (SVG, PNG): what an attack search
/// draws over its trials (each trial a cell row, its label the row's regime).
pub fn safety_utility_plot(rows: &[Row], title: &str) -> Result<(Vec<u8>, Vec<u8>), String> {
    Plot::SafetyUtility(rows, title).render()
}

fn first_set(rows: &[Row]) -> String {
    rows.first().and_then(|r| r.eval.safety.first()).map(|s| s.set.clone()).unwrap_or_default()
}

/// A row's series name: the model for base/aligned, else the method label.
fn series(r: &Row) -> String {
    if r.poison_ratio.is_some() {
        r.method.clone()
    } else {
        r.model.clone()
    }
}

fn series_names(rows: &[Row]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for r in rows {
        let s = series(r);
        if !names.contains(&s) {
            names.push(s);
        }
    }
    names
}

fn legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, (x, y): (i32, i32), names: &[String], dashed: &[String]) -> Drawn {
    for (i, n) in names.iter().enumerate() {
        let yy = y + 22 * i as i32;
        let c = colour(i);
        if dashed.contains(n) {
            area.draw(&PathElement::new(vec![(x, yy), (x + 6, yy)], c.stroke_width(2))).map_err(err)?;
            area.draw(&PathElement::new(vec![(x + 10, yy), (x + 16, yy)], c.stroke_width(2))).map_err(err)?;
        } else {
            area.draw(&Circle::new((x + 8, yy), 5, c.filled())).map_err(err)?;
        }
        area.draw(&Text::new(n.clone(), (x + 24, yy - 8), (FAMILY, 15).into_font())).map_err(err)?;
    }
    Ok(())
}

/// Text labels beside points (pixel positions), moved down past each other where their
/// boxes would overlap; a moved label gets a thin line back to its point.
fn labels<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, points: Vec<((i32, i32), String)>) -> Drawn {
    let (size, height) = (13, 15);
    let width = |s: &str| (s.chars().count() as i32 * size * 6) / 10 + 2;
    let mut order = points;
    order.sort_by_key(|((x, y), _)| (*y, *x));
    let mut placed: Vec<(i32, i32, i32, i32)> = Vec::new();
    for ((px, py), text) in order {
        let (x, w) = (px + 8, width(&text));
        let mut y = py - height - 2;
        let overlaps = |y: i32, placed: &[(i32, i32, i32, i32)]| {
            placed.iter().any(|&(bx, by, bw, bh)| x < bx + bw && bx < x + w && y < by + bh && by < y + height)
        };
        let mut tries = 0;
        while overlaps(y, &placed) && tries < 40 {
            y += height + 1;
            tries += 1;
        }
        if y != py - height - 2 {
            let to = (x, y + height / 2);
            area.draw(&PathElement::new(vec![(px, py), to], RGBColor(0x99, 0x99, 0x99).stroke_width(1))).map_err(err)?;
        }
        area.draw(&Text::new(text, (x, y), (FAMILY, size).into_font())).map_err(err)?;
        placed.push((x, y, w, height));
    }
    Ok(())
}

/// A percent-scaled chart (x from 0 to `x_max`, y from 0 to 100) with its caption and
/// axes drawn, on the left of `area`; the strip on the right is for the legend.
#[allow(clippy::type_complexity)]
fn frame<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    caption: String,
    x_max: f64,
    x_desc: String,
    y_desc: String,
) -> Result<(DrawingArea<DB, Shift>, ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>), String> {
    let (w, _) = area.dim_in_pixel();
    let (plot, side) = area.split_horizontally(w as i32 - 190);
    let mut chart = ChartBuilder::on(&plot)
        .caption(caption, (FAMILY, 19))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(62)
        .build_cartesian_2d(0f64..x_max, 0f64..100f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style((FAMILY, 14))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .axis_desc_style((FAMILY, 15))
        .draw()
        .map_err(err)?;
    Ok((side, chart))
}

/// ASR on the first safety set (y) against task utility (x), 95% intervals as whiskers.
fn safety_utility<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, rows: &[Row], title: &str) -> Drawn {
    let set = first_set(rows);
    let task = rows.first().map(|r| format!("{} {}", r.eval.task.task, r.eval.task.metric.name())).unwrap_or_default();
    let names = series_names(rows);
    let (side, mut chart) =
        frame(area, format!("{title}: safety against utility"), 100.0, format!("{task} (%)"), format!("ASR {set} (%), lower is safer"))?;
    let mut texts = Vec::new();
    for r in rows {
        let (Some(s), t) = (r.eval.safety.first(), &r.eval.task.score) else { continue };
        let c = colour(names.iter().position(|n| *n == series(r)).unwrap_or(0));
        let (x, y) = (100.0 * t.value, 100.0 * s.asr.value);
        let whiskers = [vec![(100.0 * t.ci_low, y), (100.0 * t.ci_high, y)], vec![(x, 100.0 * s.asr.ci_low), (x, 100.0 * s.asr.ci_high)]];
        for w in whiskers {
            chart.draw_series(std::iter::once(PathElement::new(w, c.stroke_width(1)))).map_err(err)?;
        }
        chart.draw_series(std::iter::once(Circle::new((x, y), 5, c.filled()))).map_err(err)?;
        if r.poison_ratio.is_some() {
            texts.push((chart.backend_coord(&(x, y)), r.regime.clone()));
        }
    }
    labels(area, texts)?;
    legend(&side, (10, 70), &names, &[])
}

/// ASR on the first safety set against the harmful share, one line per method label;
/// the base and aligned models as dashed horizontal references.
fn asr_vs_poison<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, rows: &[Row], title: &str) -> Drawn {
    let set = first_set(rows);
    let cells: Vec<&Row> = rows.iter().filter(|r| r.poison_ratio.is_some()).collect();
    let max_p = cells.iter().filter_map(|r| r.poison_ratio).fold(0.0f64, f64::max);
    let x_max = if max_p <= 0.3 { 30.0 } else { 100.0 };
    let names = series_names(rows);
    let references: Vec<String> = rows.iter().filter(|r| r.poison_ratio.is_none()).map(series).collect();
    let (side, mut chart) = frame(
        area,
        format!("{title}: ASR against harmful share"),
        x_max,
        "harmful examples in the fine-tuning data (%)".into(),
        format!("ASR {set} (%)"),
    )?;
    for r in rows.iter().filter(|r| r.poison_ratio.is_none()) {
        if let Some(s) = r.eval.safety.first() {
            let c = colour(names.iter().position(|n| *n == series(r)).unwrap_or(0));
            let y = 100.0 * s.asr.value;
            chart.draw_series(DashedLineSeries::new(vec![(0.0, y), (x_max, y)], 8, 5, c.stroke_width(2))).map_err(err)?;
        }
    }
    let mut by_method: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
    for r in &cells {
        by_method.entry(r.method.clone()).or_default().push(r);
    }
    for (m, mut rs) in by_method {
        rs.sort_by(|a, b| a.poison_ratio.partial_cmp(&b.poison_ratio).unwrap_or(std::cmp::Ordering::Equal));
        let c = colour(names.iter().position(|n| *n == m).unwrap_or(0));
        let pts: Vec<(f64, f64, f64, f64)> = rs
            .iter()
            .filter_map(|r| {
                let s = r.eval.safety.first()?;
                Some((100.0 * r.poison_ratio.unwrap_or(0.0), 100.0 * s.asr.value, 100.0 * s.asr.ci_low, 100.0 * s.asr.ci_high))
            })
            .collect();
        chart.draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.1)), c.stroke_width(2))).map_err(err)?;
        for &(x, y, lo, hi) in &pts {
            chart.draw_series(std::iter::once(PathElement::new(vec![(x, lo), (x, hi)], c.stroke_width(1)))).map_err(err)?;
            chart.draw_series(std::iter::once(Circle::new((x, y), 5, c.filled()))).map_err(err)?;
        }
    }
    legend(&side, (10, 70), &names, &references)
}

/// The heatmap's methods (rows) and regimes (columns, by harmful share).
fn heat_axes(rows: &[Row]) -> (Vec<String>, Vec<(f64, String)>) {
    let mut regimes: Vec<(f64, String)> = Vec::new();
    let mut methods: Vec<String> = Vec::new();
    for r in rows.iter().filter(|r| r.poison_ratio.is_some()) {
        let key = (r.poison_ratio.unwrap_or(0.0), r.regime.clone());
        if !regimes.contains(&key) {
            regimes.push(key);
        }
        if !methods.contains(&r.method) {
            methods.push(r.method.clone());
        }
    }
    regimes.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    (methods, regimes)
}

/// Method (rows) × regime (columns), coloured by ASR on the first safety set.
fn heatmap<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, rows: &[Row], title: &str) -> Drawn {
    let set = first_set(rows);
    let (methods, regimes) = heat_axes(rows);
    let (cw, ch, left, top) = (120, 38, 230, 70);
    let (w, h) = area.dim_in_pixel();
    let centred = |size| TextStyle::from((FAMILY, size).into_font()).pos(Pos::new(HPos::Center, VPos::Center));
    area.draw(&Text::new(format!("{title}: ASR {set} (%)"), (w as i32 / 2, 24), centred(18))).map_err(err)?;
    for (j, (_, reg)) in regimes.iter().enumerate() {
        area.draw(&Text::new(reg.clone(), (left + cw * j as i32 + cw / 2, top - 14), centred(15))).map_err(err)?;
    }
    let right = TextStyle::from((FAMILY, 15).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
    let cells: Vec<&Row> = rows.iter().filter(|r| r.poison_ratio.is_some()).collect();
    for (i, m) in methods.iter().enumerate() {
        let y = top + ch * i as i32;
        area.draw(&Text::new(m.clone(), (left - 10, y + ch / 2), right.clone())).map_err(err)?;
        for (j, (_, reg)) in regimes.iter().enumerate() {
            let x = left + cw * j as i32;
            let cell = cells.iter().find(|r| r.method == *m && r.regime == *reg).and_then(|r| r.eval.safety.first());
            // White (0%) to red (100%); light grey: not run.
            let fill = match cell {
                Some(s) => {
                    let g = (255.0 * (1.0 - 0.85 * s.asr.value.clamp(0.0, 1.0))) as u8;
                    RGBColor(255, g, g)
                }
                None => RGBColor(0xf4, 0xf4, 0xf4),
            };
            area.draw(&Rectangle::new([(x, y), (x + cw - 2, y + ch - 2)], fill.filled())).map_err(err)?;
            if let Some(s) = cell {
                area.draw(&Text::new(format!("{:.1}", 100.0 * s.asr.value), (x + cw / 2, y + ch / 2), centred(15))).map_err(err)?;
            }
        }
    }
    let note = "white 0% … red 100%; grey: not run";
    area.draw(&Text::new(note, (left, h as i32 - 26), (FAMILY, 13).into_font())).map_err(err)?;
    Ok(())
}
