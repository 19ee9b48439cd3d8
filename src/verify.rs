//! `dskd verify`: a bundle is usable when its hashes match, every graph loads on the engine
//! (tract unless told) and the golden maps are reproduced within the manifest's tolerance
//! (f32, and int8 against the same f32 golden maps with its looser bound). The daemon runs the
//! same check at start, on its configured engine.

use std::path::Path;

use serde::Serialize;

use crate::bundle::Bundle;
use crate::detector::anomaly_map::Map;
use crate::detector::{Detector, DetectorError, Engine, Precision, Timings};
use crate::preprocess;

/// Largest |value| of a map (at least 1e-6): what map and score errors are relative to.
fn peak(m: &Map) -> f32 {
    m.data.iter().fold(0.0f32, |p, v| p.max(v.abs())).max(1e-6)
}

/// Largest |a - b| relative to the reference map's peak.
pub fn map_error(reference: &Map, got: &Map) -> f32 {
    let peak = peak(reference);
    let diff = reference.data.iter().zip(&got.data).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / peak
}

/// One golden image at one precision.
#[derive(Debug, Clone, Serialize)]
pub struct GoldenCheck {
    pub image: String,
    pub engine: &'static str,
    pub precision: Precision,
    pub golden_score: f32,
    pub score: f32,
    /// max |map - golden|, and |score - golden score|, over the golden map's peak.
    pub map_error: f32,
    pub tolerance: f32,
    pub ok: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Detector(#[from] DetectorError),
    #[error(transparent)]
    Image(#[from] preprocess::PreprocessError),
    #[error(
        "{image}: {precision:?} map differs from the golden map by {error:.2e} of its peak (tolerance {tolerance:.1e})"
    )]
    Parity { image: String, precision: Precision, error: f32, tolerance: f32 },
}

/// Checks golden parity for one loaded detector.
pub fn check_golden(bundle: &Bundle, detector: &Detector) -> Result<Vec<GoldenCheck>, VerifyError> {
    let m = &bundle.manifest;
    let tolerance = match detector.precision() {
        Precision::F32 => m.golden.tolerance_f32,
        Precision::Int8 => m.golden.tolerance_int8,
    };
    let mut out = Vec::new();
    for sample in &m.golden.samples {
        let golden = bundle.golden_map(sample).map_err(DetectorError::from)?;
        let img = preprocess::load_image(&bundle.path(&sample.image))?;
        let (map, score) = detector.frame_map(&img, &mut Timings::default())?;
        // The score can hold more than the map's peak (the image Gaussian's term): held too.
        let error = map_error(&golden, &map).max((score - sample.score).abs() / peak(&golden));
        out.push(GoldenCheck {
            image: sample.image.clone(),
            engine: detector.engine(),
            precision: detector.precision(),
            golden_score: sample.score,
            score,
            map_error: error,
            tolerance,
            ok: error <= tolerance,
        });
    }
    Ok(out)
}

/// [`check_golden`], with the first sample out of tolerance as the error.
pub fn require_golden(bundle: &Bundle, detector: &Detector) -> Result<Vec<GoldenCheck>, VerifyError> {
    let checks = check_golden(bundle, detector)?;
    match checks.iter().find(|c| !c.ok) {
        Some(c) => Err(VerifyError::Parity {
            image: c.image.clone(),
            precision: c.precision,
            error: c.map_error,
            tolerance: c.tolerance,
        }),
        None => Ok(checks),
    }
}

/// Opens (hashes), loads every graph on tract and checks golden parity; the first failure is
/// the error.
pub fn verify(dir: &Path) -> Result<Vec<GoldenCheck>, VerifyError> {
    verify_on(dir, &Engine::default())
}

/// [`verify`] on the given engine.
pub fn verify_on(dir: &Path, engine: &Engine) -> Result<Vec<GoldenCheck>, VerifyError> {
    let bundle = Bundle::open(dir).map_err(DetectorError::from)?;
    let mut checks = Vec::new();
    for &p in Precision::of(&bundle.manifest) {
        checks.extend(require_golden(&bundle, &Detector::load_with(&bundle, p, engine)?)?);
    }
    Ok(checks)
}
