//! `dskd eval`: detection quality of a bundle on a labelled test set, through the very
//! detector the daemon runs (tract, the bundle's graphs, its thresholds).
//!
//! Per image: decode -> [`Detector::inspect`] (map at input size, verdict with regions in
//! source pixels) -> mask binarised at 128 and resized (nearest) to the map for pixel metrics,
//! kept at source size for region metrics. Then [`metrics`] overall and per defect type.

pub mod data;
pub mod knn;
pub mod metrics;
pub mod plots;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use image::{GrayImage, imageops::FilterType};
use serde::Serialize;

use crate::bundle::Bundle;
use crate::detector::anomaly_map::Map;
use crate::detector::verdict::{self, Region};
use crate::detector::{Detector, DetectorError, Inspection, Precision};
use crate::preprocess::{self, PreprocessError};
use data::{EvalDataError, TestImage};
use metrics::ProAccumulator;

/// Upper FPR of AUPRO's integral, by convention.
pub const AUPRO_FPR_LIMIT: f64 = 0.3;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Data(#[from] EvalDataError),
    #[error(transparent)]
    Image(#[from] PreprocessError),
    #[error(transparent)]
    Detector(#[from] DetectorError),
    #[error("{mask}: mask is {mw}x{mh} but its image {image} is {iw}x{ih}")]
    MaskSize { mask: PathBuf, image: PathBuf, mw: u32, mh: u32, iw: u32, ih: u32 },
}

/// One image's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct ImageResult {
    pub image: PathBuf,
    pub kind: String,
    pub defective: bool,
    pub score: f32,
    pub flagged: bool,
    /// Share of the image the regions' boxes cover.
    pub box_area_share: f64,
    /// For defective images with a mask that were flagged: share of box area that is defect,
    /// and share of the defect inside the boxes.
    pub box_precision: Option<f64>,
    pub box_recall: Option<f64>,
}

/// Metrics of one group of images (all, or one defect type against all normals).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Metrics {
    pub normal: usize,
    pub defective: usize,
    pub image_auroc: Option<f64>,
    pub pixel_auroc: Option<f64>,
    pub aupro: Option<f64>,
    pub f1_max: Option<f64>,
    /// Calibrated threshold: share of normals flagged, and of defects missed.
    pub false_alarm_rate: f64,
    pub miss_rate: f64,
    /// Means over flagged defective images with masks.
    pub box_precision: Option<f64>,
    pub box_recall: Option<f64>,
    /// Mean over flagged images (any label).
    pub box_area_share: Option<f64>,
}

/// How well regions cut at one pixel threshold fit the masks (flagged defects with masks,
/// at map resolution).
#[derive(Debug, Clone, Serialize)]
pub struct RegionRule {
    pub rule: String,
    pub pixel_threshold: f32,
    pub box_precision: Option<f64>,
    pub box_recall: Option<f64>,
    pub box_area_share: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub bundle: PathBuf,
    /// The bundle's detector (students, and its memory bank if any), or the ceiling's settings.
    pub scorer: String,
    pub dataset: PathBuf,
    pub precision: Precision,
    pub threshold: f32,
    pub pixel_threshold: f32,
    pub target_false_alarm_rate: f64,
    pub overall: Metrics,
    pub per_type: BTreeMap<String, Metrics>,
    /// Region fit for pixel thresholds derived from the bundle's two (both from normals only).
    pub region_rules: Vec<RegionRule>,
    pub images: Vec<ImageResult>,
    pub wall_s: f64,
    pub ms_per_image: f64,
}

/// What is kept per image for the pixel metrics.
struct Kept {
    pub map: Vec<f32>,
    pub width: usize,
    /// Mask at map size, `None` for defective images without one (normals: all false).
    pub mask: Option<Vec<bool>>,
}

/// Reads and binarises a mask, checking it matches its image.
fn read_mask(t: &TestImage, mask: &Path, iw: u32, ih: u32) -> Result<GrayImage, EvalError> {
    let m = preprocess::load_image(mask)?.to_luma8();
    if m.dimensions() != (iw, ih) {
        let (mw, mh) = m.dimensions();
        return Err(EvalError::MaskSize { mask: mask.to_owned(), image: t.image.clone(), mw, mh, iw, ih });
    }
    Ok(GrayImage::from_fn(iw, ih, |x, y| image::Luma([if m.get_pixel(x, y)[0] >= 128 { 255 } else { 0 }])))
}

/// Share of box area that is defect, and of the defect inside the boxes, on a `w x h` grid.
fn box_overlap(regions: &[Region], w: u32, h: u32, is_defect: impl Fn(usize) -> bool) -> (f64, f64) {
    let mut inside = vec![false; (w * h) as usize];
    for r in regions {
        let [x, y, bw, bh] = r.bbox;
        for yy in y..(y + bh).min(h) {
            for xx in x..(x + bw).min(w) {
                inside[(yy * w + xx) as usize] = true;
            }
        }
    }
    let boxed = inside.iter().filter(|&&b| b).count();
    let hit = (0..inside.len()).filter(|&i| inside[i] && is_defect(i)).count();
    let total = (0..inside.len()).filter(|&i| is_defect(i)).count();
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    (ratio(hit, boxed), ratio(hit, total))
}

/// Share of a `w x h` image covered by the regions' boxes (overlaps counted twice, capped at 1).
fn box_area_share(regions: &[Region], w: u32, h: u32) -> f64 {
    regions.iter().map(|r| r.bbox[2] as f64 * r.bbox[3] as f64).sum::<f64>().min((w * h) as f64) / (w * h) as f64
}

/// What scores images for `dskd eval`: the bundle's detector (the daemon's path), or the
/// nearest-neighbour ceiling on its teacher ([`knn`]).
pub trait Inspect {
    fn inspect(&self, img: &image::DynamicImage) -> Result<Inspection, DetectorError>;
    /// (image, pixel) thresholds the verdicts use.
    fn thresholds(&self) -> (f32, f32);
}

impl Inspect for Detector {
    fn inspect(&self, img: &image::DynamicImage) -> Result<Inspection, DetectorError> {
        Detector::inspect(self, img)
    }

    fn thresholds(&self) -> (f32, f32) {
        Detector::thresholds(self)
    }
}

/// Runs one image through the detector.
fn evaluate_one(det: &dyn Inspect, t: &TestImage) -> Result<(ImageResult, Kept), EvalError> {
    let img = preprocess::load_image(&t.image)?;
    let (iw, ih) = (img.width(), img.height());
    let mask = t.mask.as_deref().map(|m| read_mask(t, m, iw, ih)).transpose()?;
    let r = det.inspect(&img)?;
    let (mw, mh) = (r.map.width as u32, r.map.height as u32);
    let small = mask.as_ref().map(|m| {
        image::imageops::resize(m, mw, mh, FilterType::Nearest).as_raw().iter().map(|&p| p != 0).collect::<Vec<_>>()
    });
    let pixel_mask = match (small, t.defective) {
        (Some(m), _) => Some(m),
        (None, false) => Some(vec![false; r.map.data.len()]),
        (None, true) => None,
    };
    let (box_precision, box_recall) = match (&mask, t.defective && r.verdict.defect) {
        (Some(m), true) => {
            let (p, rc) = box_overlap(&r.verdict.regions, iw, ih, |i| m.as_raw()[i] != 0);
            (Some(p), Some(rc))
        }
        _ => (None, None),
    };
    let result = ImageResult {
        image: t.image.clone(),
        kind: t.kind.clone(),
        defective: t.defective,
        score: r.verdict.score,
        flagged: r.verdict.defect,
        box_area_share: box_area_share(&r.verdict.regions, iw, ih),
        box_precision,
        box_recall,
    };
    Ok((result, Kept { width: r.map.width, map: r.map.data, mask: pixel_mask }))
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

/// Metrics over the images selected by `pick` (indices into `results`/`kept`).
fn group_metrics(results: &[ImageResult], kept: &[Kept], pick: &[usize]) -> Metrics {
    let scores: Vec<f32> = pick.iter().map(|&i| results[i].score).collect();
    let labels: Vec<bool> = pick.iter().map(|&i| results[i].defective).collect();
    let (mut px_scores, mut px_labels) = (Vec::new(), Vec::new());
    let mut pro = ProAccumulator::default();
    for &i in pick {
        if let Some(mask) = &kept[i].mask {
            px_scores.extend_from_slice(&kept[i].map);
            px_labels.extend_from_slice(mask);
            pro.add(&kept[i].map, mask, kept[i].width);
        }
    }
    let normals: Vec<&ImageResult> = pick.iter().map(|&i| &results[i]).filter(|r| !r.defective).collect();
    let defects: Vec<&ImageResult> = pick.iter().map(|&i| &results[i]).filter(|r| r.defective).collect();
    let rate = |v: &[&ImageResult], f: fn(&ImageResult) -> bool| {
        if v.is_empty() { 0.0 } else { v.iter().filter(|r| f(r)).count() as f64 / v.len() as f64 }
    };
    Metrics {
        normal: normals.len(),
        defective: defects.len(),
        image_auroc: metrics::auroc(&scores, &labels),
        pixel_auroc: metrics::auroc(&px_scores, &px_labels),
        aupro: pro.aupro(AUPRO_FPR_LIMIT),
        f1_max: metrics::f1_max(&scores, &labels).map(|(f, _)| f),
        false_alarm_rate: rate(&normals, |r| r.flagged),
        miss_rate: rate(&defects, |r| !r.flagged),
        box_precision: mean(defects.iter().filter_map(|r| r.box_precision)),
        box_recall: mean(defects.iter().filter_map(|r| r.box_recall)),
        box_area_share: mean(pick.iter().map(|&i| &results[i]).filter(|r| r.flagged).map(|r| r.box_area_share)),
    }
}

/// Region fit of the flagged defects for pixel thresholds between the bundle's pixel threshold
/// and its image threshold (both calibrated on normals).
fn region_rules(results: &[ImageResult], kept: &[Kept], threshold: f32, pixel: f32) -> Vec<RegionRule> {
    let rules = [
        ("the bundle's pixel threshold", pixel),
        ("midway to the image threshold", (pixel + threshold) / 2.0),
        ("the image threshold", threshold),
    ];
    rules
        .into_iter()
        .map(|(rule, px)| {
            let mut fits = Vec::new();
            for (r, k) in results.iter().zip(kept) {
                let Some(mask) = k.mask.as_ref().filter(|_| r.defective && r.flagged) else { continue };
                let map = Map { data: k.map.clone(), height: k.map.len() / k.width, width: k.width };
                let (w, h) = (map.width as u32, map.height as u32);
                let regions = verdict::regions(&map, px, threshold, w, h);
                let (p, rc) = box_overlap(&regions, w, h, |i| mask[i]);
                fits.push((p, rc, box_area_share(&regions, w, h)));
            }
            RegionRule {
                rule: rule.into(),
                pixel_threshold: px,
                box_precision: mean(fits.iter().map(|f| f.0)),
                box_recall: mean(fits.iter().map(|f| f.1)),
                box_area_share: mean(fits.iter().map(|f| f.2)),
            }
        })
        .collect()
}

/// What `dskd eval` is asked to do.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub bundle: PathBuf,
    pub dataset: PathBuf,
    pub precision: Precision,
    pub progress: bool,
    /// Score with the nearest-neighbour ceiling on the bundle's teacher instead of its students.
    pub knn: Option<knn::KnnOptions>,
}

/// Evaluates a bundle on a dataset; returns the report and the scorer that made it (for the
/// overlays of [`write_outputs`]).
pub fn evaluate(opts: &EvalOptions) -> anyhow::Result<(Report, Box<dyn Inspect>)> {
    use anyhow::Context;
    let bundle = Bundle::open(&opts.bundle).with_context(|| format!("opening bundle {}", opts.bundle.display()))?;
    if opts.precision == Precision::Int8 && bundle.manifest.graphs.int8.is_none() {
        anyhow::bail!("{}: the bundle has no int8 graphs (see its manifest's training.int8)", opts.bundle.display());
    }
    let (det, scorer): (Box<dyn Inspect>, String) = match &opts.knn {
        None => {
            let scorer = match &bundle.manifest.memory_bank {
                Some(b) => format!("bundle (students + memory bank of {} entries)", b.rows),
                None => "bundle (students)".into(),
            };
            (Box::new(Detector::load(&bundle, opts.precision)?), scorer)
        }
        Some(k) => (Box::new(knn::KnnScorer::fit(&bundle, k)?), k.describe()),
    };
    let tests = data::load(&opts.dataset)?;
    // From here: the time to score images (loading plans or fitting a kNN bank excluded).
    let started = Instant::now();
    let bar = crate::progress::progress_bar(tests.len() as u64, "eval", opts.progress);
    let (mut results, mut kept) = (Vec::with_capacity(tests.len()), Vec::with_capacity(tests.len()));
    for t in &tests {
        let (r, k) = evaluate_one(det.as_ref(), t)?;
        results.push(r);
        kept.push(k);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let all: Vec<usize> = (0..results.len()).collect();
    let normals: Vec<usize> = all.iter().copied().filter(|&i| !results[i].defective).collect();
    let mut per_type = BTreeMap::new();
    let kinds: std::collections::BTreeSet<&str> =
        results.iter().filter(|r| r.defective).map(|r| r.kind.as_str()).collect();
    for kind in kinds {
        let mut pick = normals.clone();
        pick.extend(all.iter().copied().filter(|&i| results[i].defective && results[i].kind == kind));
        per_type.insert(kind.to_string(), group_metrics(&results, &kept, &pick));
    }
    let (threshold, pixel_threshold) = det.thresholds();
    let wall_s = started.elapsed().as_secs_f64();
    let report = Report {
        bundle: opts.bundle.clone(),
        scorer,
        dataset: opts.dataset.clone(),
        precision: opts.precision,
        threshold,
        pixel_threshold,
        target_false_alarm_rate: bundle.manifest.calibration.target_false_alarm_rate,
        overall: group_metrics(&results, &kept, &all),
        per_type,
        region_rules: region_rules(&results, &kept, threshold, pixel_threshold),
        ms_per_image: 1e3 * wall_s / results.len() as f64,
        images: results,
        wall_s,
    };
    Ok((report, det))
}

/// The terminal table: one row per defect type and one for all.
pub fn table(r: &Report) -> String {
    let f = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
    let pct = |v: f64| format!("{:.1}%", 100.0 * v);
    let mut out = format!(
        "{:<14} {:>6} {:>6} {:>9} {:>9} {:>7} {:>7} {:>8} {:>7} {:>8} {:>8}\n",
        "type",
        "normal",
        "defect",
        "img AUROC",
        "px AUROC",
        "AUPRO",
        "F1-max",
        "false al",
        "missed",
        "box prec",
        "box area"
    );
    let rows = r.per_type.iter().map(|(k, m)| (k.as_str(), m)).chain([("all", &r.overall)]);
    for (kind, m) in rows {
        out += &format!(
            "{:<14} {:>6} {:>6} {:>9} {:>9} {:>7} {:>7} {:>8} {:>7} {:>8} {:>8}\n",
            kind,
            m.normal,
            m.defective,
            f(m.image_auroc),
            f(m.pixel_auroc),
            f(m.aupro),
            f(m.f1_max),
            pct(m.false_alarm_rate),
            pct(m.miss_rate),
            m.box_precision.map(pct).unwrap_or_else(|| "-".into()),
            m.box_area_share.map(pct).unwrap_or_else(|| "-".into()),
        );
    }
    out
}

/// Writes `report.json`, `scores.csv`, `roc.png`, `histogram.png` and `hardest.png` into `out`.
pub fn write_outputs(report: &Report, scorer: &dyn Inspect, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    use anyhow::Context;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let path = |name: &str| out.join(name);
    let json = path("report.json");
    std::fs::write(&json, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let csv = path("scores.csv");
    let mut lines = vec!["image,kind,defective,score,flagged".to_string()];
    lines.extend(
        report
            .images
            .iter()
            .map(|r| format!("{},{},{},{},{}", r.image.display(), r.kind, r.defective, r.score, r.flagged)),
    );
    std::fs::write(&csv, lines.join("\n") + "\n").with_context(|| format!("writing {}", csv.display()))?;

    let name = report.bundle.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let precision = report.precision.name();
    let plot_err = |what: &Path| {
        let what = what.to_owned();
        move |e: Box<dyn std::error::Error>| anyhow::anyhow!("drawing {}: {e}", what.display())
    };
    let (normal, defective): (Vec<&ImageResult>, Vec<&ImageResult>) = report.images.iter().partition(|r| !r.defective);
    let mut curves = vec![curve("all", &report.images, report.overall.image_auroc)];
    for (kind, m) in &report.per_type {
        let group: Vec<ImageResult> =
            report.images.iter().filter(|r| !r.defective || &r.kind == kind).cloned().collect();
        curves.push(curve(kind, &group, m.image_auroc));
    }
    let roc = path("roc.png");
    plots::roc(&roc, &format!("{name} ({precision}): image ROC"), &curves).map_err(plot_err(&roc))?;
    let hist = path("histogram.png");
    let scores = |v: &[&ImageResult]| v.iter().map(|r| r.score).collect::<Vec<_>>();
    plots::histogram(
        &hist,
        &format!("{name} ({precision}): scores of test images"),
        &scores(&normal),
        &scores(&defective),
        report.threshold,
    )
    .map_err(plot_err(&hist))?;
    let sheet = path("hardest.png");
    hardest_sheet(report, scorer, &normal, &defective, &sheet)?;
    Ok(vec![json, csv, roc, hist, sheet])
}

fn curve(label: &str, images: &[ImageResult], auroc: Option<f64>) -> plots::Curve {
    let scores: Vec<f32> = images.iter().map(|r| r.score).collect();
    let labels: Vec<bool> = images.iter().map(|r| r.defective).collect();
    let auroc = auroc.map(|a| format!(" {a:.3}")).unwrap_or_default();
    plots::Curve { label: format!("{label}{auroc}"), points: metrics::roc_curve(&scores, &labels) }
}

/// Overlays of the 6 highest-scored normals and the 6 lowest-scored defects.
fn hardest_sheet(
    report: &Report,
    det: &dyn Inspect,
    normal: &[&ImageResult],
    defective: &[&ImageResult],
    out: &Path,
) -> anyhow::Result<()> {
    let mut worst_normal = normal.to_vec();
    worst_normal.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut hidden = defective.to_vec();
    hidden.sort_by(|a, b| a.score.total_cmp(&b.score));
    let mut tiles = Vec::new();
    for r in worst_normal.iter().take(6).chain(hidden.iter().take(6)) {
        let img = preprocess::load_image(&r.image)?;
        let inspection = det.inspect(&img)?;
        let stem = r.image.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let verdict = if r.flagged { "FLAGGED" } else { "passed" };
        let caption = format!("{} {:.3} {verdict}\n{}", r.kind, r.score, stem);
        tiles.push((crate::overlay::render(&img, &inspection.map, &inspection.verdict), caption));
    }
    let title =
        format!("top row(s): highest-scored normals; then: lowest-scored defects (threshold {:.3})", report.threshold);
    plots::contact_sheet(out, &title, &tiles, 6).map_err(|e| anyhow::anyhow!("drawing {}: {e}", out.display()))
}
