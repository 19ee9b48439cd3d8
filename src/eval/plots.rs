//! The pictures of an evaluation: ROC curves, the score histogram with the calibrated
//! threshold, and a contact sheet of the hardest cases (worst-scored normals, best-hidden
//! defects) as heatmap overlays. PNG, drawn with plotters and the bundled DejaVu Sans Mono.

use std::path::Path;
use std::sync::Once;

use image::{RgbImage, imageops::FilterType};
use plotters::prelude::*;
use plotters::style::FontStyle;

/// The font every label is drawn in (DejaVu, Bitstream Vera licence: assets/fonts/).
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSansMono.ttf");
const FAMILY: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is compiled in and known to parse; a failure here is a build problem.
        let _ = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

/// An RGB canvas of `w x h` white pixels that plotters draws into; saved by [`save`].
fn canvas(w: u32, h: u32) -> Vec<u8> {
    register_font();
    vec![255u8; (3 * w * h) as usize]
}

/// The legend box every chart here uses.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> PlotResult
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FAMILY, 14))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 0, 0),
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];

/// One ROC curve to draw.
pub struct Curve {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// ROC curves (FPR, TPR), the first drawn thickest.
pub fn roc(path: &Path, title: &str, curves: &[Curve]) -> PlotResult {
    let (w, h) = (720u32, 640u32);
    let mut buf = canvas(w, h);
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FAMILY, 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..1f64, 0f64..1.001f64)?;
        chart
            .configure_mesh()
            .x_desc("false positive rate (normal images flagged)")
            .y_desc("true positive rate (defects found)")
            .label_style((FAMILY, 14))
            .draw()?;
        chart.draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.2)))?;
        for (i, c) in curves.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let width = if i == 0 { 3 } else { 1 };
            chart
                .draw_series(LineSeries::new(c.points.iter().copied(), colour.stroke_width(width)))?
                .label(c.label.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(3)));
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        root.present()?;
    }
    save(path, w, h, buf)
}

/// Writes an RGB buffer drawn by plotters as PNG (through our own `image`).
fn save(path: &Path, w: u32, h: u32, buf: Vec<u8>) -> PlotResult {
    RgbImage::from_raw(w, h, buf).ok_or("plot buffer size")?.save(path)?;
    Ok(())
}

/// Histogram of normal and defective image scores, with the calibrated threshold.
pub fn histogram(path: &Path, title: &str, normal: &[f32], defective: &[f32], threshold: f32) -> PlotResult {
    let all = normal.iter().chain(defective).copied();
    let (lo, hi) = all.fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), v| (l.min(v), h.max(v)));
    let (lo, hi) = (lo.min(threshold) as f64, hi.max(threshold) as f64);
    let bins = 40usize;
    let width = ((hi - lo) / bins as f64).max(1e-9);
    let count = |v: &[f32]| {
        let mut c = vec![0usize; bins];
        for &s in v {
            c[(((s as f64 - lo) / width) as usize).min(bins - 1)] += 1;
        }
        c
    };
    let (cn, cd) = (count(normal), count(defective));
    // Shares, so a few hundred defects and a few hundred normals read on one scale.
    let share = |c: &[usize], n: usize| c.iter().map(|&k| k as f64 / n.max(1) as f64).collect::<Vec<_>>();
    let (sn, sd) = (share(&cn, normal.len()), share(&cd, defective.len()));
    let top = sn.iter().chain(&sd).copied().fold(0.0, f64::max) * 1.1;
    let (w, h) = (800u32, 480u32);
    let mut buf = canvas(w, h);
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FAMILY, 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(lo..hi + width, 0f64..top.max(1e-3))?;
        chart
            .configure_mesh()
            .x_desc("image score (max of the fused anomaly map)")
            .y_desc("share of images")
            .label_style((FAMILY, 14))
            .draw()?;
        for (shares, colour, label, n) in
            [(&sn, PALETTE[1], "normal", normal.len()), (&sd, PALETTE[4], "defective", defective.len())]
        {
            chart
                .draw_series(shares.iter().enumerate().map(|(i, &s)| {
                    let x0 = lo + i as f64 * width;
                    Rectangle::new([(x0, 0.0), (x0 + width, s)], colour.mix(0.45).filled())
                }))?
                .label(format!("{label} ({n})"))
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], colour.mix(0.45).filled()));
        }
        let t = threshold as f64;
        chart
            .draw_series(LineSeries::new([(t, 0.0), (t, top)], BLACK.stroke_width(2)))?
            .label(format!("calibrated threshold {threshold:.3}"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BLACK.stroke_width(2)));
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        root.present()?;
    }
    save(path, w, h, buf)
}

/// Tiles with a caption each, in rows of `per_row`, under a title.
pub fn contact_sheet(path: &Path, title: &str, tiles: &[(RgbImage, String)], per_row: usize) -> PlotResult {
    register_font();
    let (tw, th, cap, head) = (240u32, 240u32, 36u32, 36u32);
    let per_row = per_row.max(1);
    let rows = tiles.len().div_ceil(per_row).max(1) as u32;
    let (w, h) = (per_row as u32 * tw, head + rows * (th + cap));
    let mut sheet = RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    for (i, (img, _)) in tiles.iter().enumerate() {
        let small = image::imageops::resize(img, tw - 8, th - 8, FilterType::Triangle);
        let (x, y) = ((i % per_row) as u32 * tw + 4, head + (i / per_row) as u32 * (th + cap) + 4);
        image::imageops::overlay(&mut sheet, &small, x as i64, y as i64);
    }
    {
        let root = BitMapBackend::with_buffer(sheet.as_mut(), (w, h)).into_drawing_area();
        root.draw(&Text::new(title.to_string(), (8, 8), (FAMILY, 18).into_font().color(&BLACK)))?;
        for (i, (_, caption)) in tiles.iter().enumerate() {
            let (x, y) = ((i % per_row) as i32 * tw as i32 + 6, (head + (i / per_row) as u32 * (th + cap) + th) as i32);
            for (k, line) in caption.lines().take(2).enumerate() {
                let style = (FAMILY, 13).into_font().color(&BLACK);
                root.draw(&Text::new(line.to_string(), (x, y + 15 * k as i32), style))?;
            }
        }
        root.present()?;
    }
    sheet.save(path)?;
    Ok(())
}
