//! Charts of a run: for each table of results (one backend, payload and
//! session count), an SVG bar chart of every system's throughput relative
//! to the raw-client floor of the same round (the `vs floor` column,
//! medians over rounds), with the floor at 1.0 marked. SVG only, drawn
//! with `plotters` without any font or system library: the text is SVG
//! `<text>` that the viewer renders.

use std::fmt::Write as _;

use plotters::prelude::*;

use crate::report::{median, Row};

/// One chart: the file name it is meant for and the SVG document.
#[derive(Debug, Clone)]
pub struct Chart {
    /// `<backend>-<payload>B-<sessions>.svg`, file-name safe.
    pub file_name: String,
    /// The title drawn on the chart.
    pub title: String,
    /// The SVG document.
    pub svg: String,
}

/// The systems of one table with their median ratio to the floor, in
/// first-seen order; systems without a floor (the paths) are left out.
fn ratios(rows: &[Row], backend: &str, payload: usize, sessions: usize) -> Vec<(String, f64)> {
    let mut systems: Vec<&str> = Vec::new();
    for r in rows {
        if r.backend == backend
            && r.payload == payload
            && r.sessions == sessions
            && r.vs_floor.is_some()
            && !systems.contains(&r.system.as_str())
        {
            systems.push(&r.system);
        }
    }
    systems
        .into_iter()
        .map(|system| {
            let values = rows
                .iter()
                .filter(|r| {
                    r.backend == backend
                        && r.payload == payload
                        && r.sessions == sessions
                        && r.system == system
                })
                .filter_map(|r| r.vs_floor)
                .collect();
            (system.to_owned(), median(values))
        })
        .filter(|(_, v)| v.is_finite())
        .collect()
}

/// One chart per table of `rows` (backend, payload, sessions) that has at
/// least one system with a ratio to the floor.
///
/// # Errors
///
/// When `plotters` fails to draw (it should not: the backend writes to
/// a string).
pub fn charts(rows: &[Row]) -> Result<Vec<Chart>, String> {
    let mut tables: Vec<(String, usize, usize)> = Vec::new();
    for r in rows {
        let t = (r.backend.clone(), r.payload, r.sessions);
        if !tables.contains(&t) {
            tables.push(t);
        }
    }
    let mut out = Vec::new();
    for (backend, payload, sessions) in tables {
        let bars = ratios(rows, &backend, payload, sessions);
        if bars.is_empty() {
            continue;
        }
        let title =
            format!("{backend}, {payload} B payload, {sessions} sessions: throughput vs floor");
        let svg = bar_chart(&title, &bars).map_err(|e| format!("drawing {title}: {e}"))?;
        let file_name = format!("{}-{payload}B-{sessions}.svg", file_safe(&backend));
        out.push(Chart {
            file_name,
            title,
            svg,
        });
    }
    Ok(out)
}

fn file_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Horizontal bars, one per system, labelled with the ratio; a dashed
/// line at 1.0 (the floor).
fn bar_chart(title: &str, bars: &[(String, f64)]) -> Result<String, Box<dyn std::error::Error>> {
    let mut svg = String::new();
    let rows = u32::try_from(bars.len()).unwrap_or(u32::MAX);
    let height = 90 + 34 * rows;
    let max = bars.iter().map(|b| b.1).fold(1.0_f64, f64::max) * 1.15;
    {
        let root = SVGBackend::with_string(&mut svg, (820, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let n = bars.len();
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(230)
            .build_cartesian_2d(0.0..max, (0..n).into_segmented())?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => bars
                    .get(*i)
                    .map(|(name, _)| name.clone())
                    .unwrap_or_default(),
                _ => String::new(),
            })
            .x_desc("ops/s relative to the floor (median over rounds)")
            .label_style(("sans-serif", 13))
            .draw()?;
        let color = |name: &str| {
            if name == "floor" {
                RGBColor(150, 150, 150)
            } else if name.starts_with("manager") {
                RGBColor(31, 119, 180)
            } else {
                RGBColor(255, 127, 14)
            }
        };
        chart.draw_series(bars.iter().enumerate().map(|(i, (name, v))| {
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(i)),
                    (*v, SegmentValue::Exact(i + 1)),
                ],
                color(name).filled(),
            );
            bar.set_margin(6, 6, 0, 0);
            bar
        }))?;
        chart.draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
            Text::new(
                format!("{v:.2}×"),
                (*v + max * 0.01, SegmentValue::CenterOf(i)),
                ("sans-serif", 13).into_font(),
            )
        }))?;
        // The floor.
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Last)],
            BLACK.stroke_width(1),
        )))?;
        root.present()?;
    }
    Ok(svg)
}

/// Markdown that shows `charts` (stored under `dir`, a path relative to the
/// Markdown file), one image per line.
#[must_use]
pub fn markdown_images(charts: &[Chart], dir: &str) -> String {
    let mut out = String::new();
    for c in charts {
        let _ = writeln!(out, "![{}]({dir}/{})", c.title, c.file_name);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(system: &str, backend: &str, payload: usize, round: usize, ops: f64) -> Row {
        Row {
            system: system.to_owned(),
            backend: backend.to_owned(),
            payload,
            sessions: 100,
            round,
            ops_per_sec: ops,
            p50_us: 1,
            p99_us: 2,
            p999_us: 3,
            vs_floor: None,
            errors: 0,
        }
    }

    #[test]
    fn one_chart_per_table_with_every_system_and_its_median_ratio() {
        let mut rows = Vec::new();
        for round in 0..3 {
            for payload in [200, 4096] {
                rows.push(row("floor", "redis", payload, round, 1000.0));
                let ratio = [0.5, 0.7, 0.6][round];
                rows.push(row("manager", "redis", payload, round, 1000.0 * ratio));
                rows.push(row(
                    "tower-sessions <redis>",
                    "redis",
                    payload,
                    round,
                    400.0,
                ));
                rows.push(row("path:login", "redis", payload, round, 10.0));
            }
        }
        crate::report::attach_floor_ratios(&mut rows);
        let charts = charts(&rows).unwrap();
        let names: Vec<&str> = charts.iter().map(|c| c.file_name.as_str()).collect();
        assert_eq!(names, ["redis-200B-100.svg", "redis-4096B-100.svg"]);
        let svg = &charts[0].svg;
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        assert!(svg.contains("manager") && svg.contains("floor"));
        assert!(
            svg.contains("tower-sessions &lt;redis&gt;"),
            "names are escaped"
        );
        assert!(svg.contains("0.60×"), "the median of 0.5, 0.7, 0.6");
        assert!(svg.contains("1.00×") && svg.contains("0.40×"));
        assert!(!svg.contains("path:login"), "paths have no floor");
        assert!(!svg.contains("NaN"));
        let md = markdown_images(&charts, "docs/bench");
        assert!(md.contains("](docs/bench/redis-4096B-100.svg)"));
    }

    #[test]
    fn no_floor_no_chart() {
        let rows = vec![row("manager", "memory", 200, 0, 5.0)];
        assert!(charts(&rows).unwrap().is_empty());
    }
}
