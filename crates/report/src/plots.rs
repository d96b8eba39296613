//! The three plots of a report: safety against utility, ASR against poison
//! ratio per method, and a method × regime heatmap of ASR.

use std::collections::BTreeMap;

use super::svg::{colour, Axes, Svg};
use super::Row;

/// `(file name, SVG text)` for every plot the rows support.
pub fn all(rows: &[Row], title: &str) -> Vec<(String, String)> {
    let mut out = vec![("safety_utility.svg".to_string(), safety_utility(rows, title))];
    if rows.iter().any(|r| r.poison_ratio.is_some()) {
        out.push(("asr_vs_poison.svg".into(), asr_vs_poison(rows, title)));
        out.push(("heatmap.svg".into(), heatmap(rows, title)));
    }
    out
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

fn legend(svg: &mut Svg, x: f64, y: f64, names: &[String]) {
    for (i, n) in names.iter().enumerate() {
        let yy = y + 18.0 * i as f64;
        svg.circle((x + 5.0, yy - 4.0), 5.0, colour(i));
        svg.text((x + 16.0, yy), n, 12.0, "start", None);
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

/// ASR on the first safety set (y) against task utility (x), 95% intervals as whiskers.
fn safety_utility(rows: &[Row], title: &str) -> String {
    let set = first_set(rows);
    let task = rows.first().map(|r| format!("{} {}", r.eval.task.task, &r.eval.task.metric.name())).unwrap_or_default();
    let names = series_names(rows);
    let mut svg = Svg::new(760.0, 480.0);
    svg.text((330.0, 24.0), &format!("{title}: safety against utility"), 15.0, "middle", None);
    let ax = Axes { left: 70.0, top: 40.0, width: 520.0, height: 370.0, x: (0.0, 100.0), y: (0.0, 100.0) };
    ax.draw(&mut svg, (20.0, 20.0), &format!("{task} (%)"), &format!("ASR {set} (%), lower is safer"));
    for r in rows {
        let (Some(s), t) = (r.eval.safety.first(), &r.eval.task.score) else { continue };
        let c = colour(names.iter().position(|n| *n == series(r)).unwrap_or(0));
        let (x, y) = (100.0 * t.value, 100.0 * s.asr.value);
        svg.line(ax.at(100.0 * t.ci_low, y), ax.at(100.0 * t.ci_high, y), c, 1.2, None);
        svg.line(ax.at(x, 100.0 * s.asr.ci_low), ax.at(x, 100.0 * s.asr.ci_high), c, 1.2, None);
        svg.circle(ax.at(x, y), 5.0, c);
        if r.poison_ratio.is_some() {
            let (px, py) = ax.at(x, y);
            svg.text((px + 7.0, py - 6.0), &r.regime, 10.0, "start", None);
        }
    }
    legend(&mut svg, 605.0, 60.0, &names);
    svg.finish()
}

/// ASR on the first safety set against the poison ratio, one line per method
/// label; the base and aligned models as horizontal references.
fn asr_vs_poison(rows: &[Row], title: &str) -> String {
    let set = first_set(rows);
    let mut svg = Svg::new(760.0, 480.0);
    svg.text((330.0, 24.0), &format!("{title}: ASR against harmful share"), 15.0, "middle", None);
    let cells: Vec<&Row> = rows.iter().filter(|r| r.poison_ratio.is_some()).collect();
    let max_p = cells.iter().filter_map(|r| r.poison_ratio).fold(0.0f64, f64::max);
    let x_max = if max_p <= 0.3 { 30.0 } else { 100.0 };
    let ax = Axes { left: 70.0, top: 40.0, width: 520.0, height: 370.0, x: (0.0, x_max), y: (0.0, 100.0) };
    ax.draw(
        &mut svg,
        (if x_max <= 30.0 { 5.0 } else { 20.0 }, 20.0),
        "harmful examples in the fine-tuning data (%)",
        &format!("ASR {set} (%)"),
    );
    let names = series_names(rows);
    for r in rows.iter().filter(|r| r.poison_ratio.is_none()) {
        if let Some(s) = r.eval.safety.first() {
            let c = colour(names.iter().position(|n| *n == series(r)).unwrap_or(0));
            let y = 100.0 * s.asr.value;
            svg.line(ax.at(0.0, y), ax.at(x_max, y), c, 1.5, Some("6 4"));
        }
    }
    let mut by_method: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
    for r in &cells {
        by_method.entry(r.method.clone()).or_default().push(r);
    }
    for (m, mut rs) in by_method {
        rs.sort_by(|a, b| a.poison_ratio.partial_cmp(&b.poison_ratio).unwrap_or(std::cmp::Ordering::Equal));
        let c = colour(names.iter().position(|n| *n == m).unwrap_or(0));
        let pts: Vec<(f64, f64)> = rs
            .iter()
            .filter_map(|r| r.eval.safety.first().map(|s| ax.at(100.0 * r.poison_ratio.unwrap_or(0.0), 100.0 * s.asr.value)))
            .collect();
        svg.polyline(&pts, c, 2.0);
        for r in rs {
            if let Some(s) = r.eval.safety.first() {
                let x = 100.0 * r.poison_ratio.unwrap_or(0.0);
                svg.line(ax.at(x, 100.0 * s.asr.ci_low), ax.at(x, 100.0 * s.asr.ci_high), c, 1.2, None);
                svg.circle(ax.at(x, 100.0 * s.asr.value), 4.5, c);
            }
        }
    }
    legend(&mut svg, 605.0, 60.0, &names);
    svg.finish()
}

/// Method (rows) × regime (columns), coloured by ASR on the first safety set.
fn heatmap(rows: &[Row], title: &str) -> String {
    let set = first_set(rows);
    let cells: Vec<&Row> = rows.iter().filter(|r| r.poison_ratio.is_some()).collect();
    let mut regimes: Vec<(f64, String)> = Vec::new();
    let mut methods: Vec<String> = Vec::new();
    for r in &cells {
        let key = (r.poison_ratio.unwrap_or(0.0), r.regime.clone());
        if !regimes.contains(&key) {
            regimes.push(key);
        }
        if !methods.contains(&r.method) {
            methods.push(r.method.clone());
        }
    }
    regimes.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    let (cw, ch, left, top) = (110.0, 34.0, 230.0, 60.0);
    let w = left + cw * regimes.len() as f64 + 30.0;
    let h = top + ch * methods.len() as f64 + 60.0;
    let mut svg = Svg::new(w.max(420.0), h);
    svg.text((w.max(420.0) / 2.0, 24.0), &format!("{title}: ASR {set} (%)"), 15.0, "middle", None);
    for (j, (_, reg)) in regimes.iter().enumerate() {
        svg.text((left + cw * (j as f64 + 0.5), top - 8.0), reg, 12.0, "middle", None);
    }
    for (i, m) in methods.iter().enumerate() {
        let y = top + ch * i as f64;
        svg.text((left - 8.0, y + ch / 2.0 + 4.0), m, 12.0, "end", None);
        for (j, (_, reg)) in regimes.iter().enumerate() {
            let x = left + cw * j as f64;
            let Some(s) = cells.iter().find(|r| r.method == *m && r.regime == *reg).and_then(|r| r.eval.safety.first()) else {
                svg.rect(x, y, cw, ch, "#f4f4f4", Some("#ffffff"));
                continue;
            };
            let v = s.asr.value.clamp(0.0, 1.0);
            // White (0%) to red (100%).
            let g = (255.0 * (1.0 - 0.85 * v)) as u8;
            svg.rect(x, y, cw, ch, &format!("#ff{g:02x}{g:02x}"), Some("#ffffff"));
            svg.text((x + cw / 2.0, y + ch / 2.0 + 4.0), &format!("{:.1}", 100.0 * s.asr.value), 12.0, "middle", None);
        }
    }
    svg.text((left, h - 20.0), "white 0% … red 100%; empty: not run", 11.0, "start", None);
    svg.finish()
}
