//! Line plots as PNG files (plotters), for curves a reader would rather look at than read.

use plotters::prelude::*;
use std::path::Path;

/// A plot could not be drawn or written.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PlotError(pub String);

/// One named curve.
pub struct Series<'a> {
    /// Legend label.
    pub label: &'a str,
    /// `(x, y)` points.
    pub points: Vec<(f64, f64)>,
}

/// Draws `series` into a PNG at `path`; `log2_x` uses a log₂ x axis (for model sizes).
pub fn line_plot(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series<'_>],
    log2_x: bool,
) -> Result<(), PlotError> {
    let tx = |x: f64| if log2_x { x.log2() } else { x };
    let all = || series.iter().flat_map(|s| s.points.iter());
    let (x0, x1) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(tx(p.0)), b.max(tx(p.0))));
    let (y0, y1) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if !x0.is_finite() || !y0.is_finite() {
        return Err(PlotError(format!("plot {}: no finite points to draw", path.display())));
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| PlotError(format!("drawing {}: {e}", path.display()));
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1.max(x0 + 1e-9), (y0 - pad)..(y1 + pad))
        .map_err(|e| err(&e))?;
    let fmt_x = |v: &f64| if log2_x { format!("{}", 2f64.powf(*v).round()) } else { format!("{v:.0}") };
    chart.configure_mesh().x_desc(x_label).y_desc(y_label).x_label_formatter(&fmt_x).draw().map_err(|e| err(&e))?;
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for (i, s) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(s.points.iter().map(|p| (tx(p.0), p.1)), c.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(s.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(s.points.iter().map(|p| Circle::new((tx(p.0), p.1), 3, c.filled()))).map_err(|e| err(&e))?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Draws `panels` (each a row-major `rows × cols` matrix of values in [0, 1] with a title) side
/// by side as heat maps, with `labels` along both axes (one per row/column), into a PNG.
pub fn heatmaps(
    path: &Path,
    title: &str,
    panels: &[(String, Vec<f64>)],
    n: usize,
    labels: &[String],
) -> Result<(), PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError(format!("drawing {}: {e}", path.display()));
    let cell = 10u32;
    let panel_px = cell * n as u32 + 60;
    let width = panel_px * panels.len().max(1) as u32 + 20;
    let root = BitMapBackend::new(path, (width, panel_px + 70)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    root.draw(&Text::new(title.to_string(), (10, 8), ("sans-serif", 20))).map_err(|e| err(&e))?;
    for (p, (name, m)) in panels.iter().enumerate() {
        let x0 = 20 + p as i32 * panel_px as i32 + 40;
        let y0 = 60;
        root.draw(&Text::new(name.clone(), (x0, y0 - 22), ("sans-serif", 16))).map_err(|e| err(&e))?;
        for i in 0..n {
            for j in 0..n {
                let v = m[i * n + j].clamp(0.0, 1.0);
                let shade = (255.0 * (1.0 - v.sqrt())) as u8;
                let color = RGBColor(shade, shade, 255);
                let (x, y) = (x0 + (j as u32 * cell) as i32, y0 + (i as u32 * cell) as i32);
                root.draw(&Rectangle::new([(x, y), (x + cell as i32, y + cell as i32)], color.filled()))
                    .map_err(|e| err(&e))?;
            }
            if p == 0 {
                let label = labels.get(i).cloned().unwrap_or_default();
                root.draw(&Text::new(label, (x0 - 14, y0 + (i as u32 * cell) as i32), ("monospace", 10)))
                    .map_err(|e| err(&e))?;
            }
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
