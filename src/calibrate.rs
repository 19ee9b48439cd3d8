//! The alarm threshold, from held-out normal images only.
//!
//! An image score is the max of a smoothed map: a maximum of many weakly dependent values, so
//! extreme-value theory says its distribution over normal images is close to Gumbel. We fit
//! the Gumbel by the method of moments (`β = s√6/π`, `μ = m − γβ`) and read the threshold off
//! its quantile, `t = μ − β ln(−ln(1 − rate))`: a 1% (or 0.1%) false-alarm rate from a few
//! dozen normals, where the empirical quantile would just be the sample maximum.
//!
//! The pixel threshold (for region extents) lies midway between the empirical (1 − rate)
//! quantile of all normal map pixels (millions of them, so no fit is needed) and the image
//! threshold: both come from normal images alone. Why midway: on Magnetic Tile (docs/RESULTS.md)
//! regions cut at the quantile boxed a third of the image with 37% of the box area defect;
//! midway they boxed 10% at 51% defect; at the image threshold 1% at 65%, but only 11% of the
//! defect. Midway points at the defect without losing most of it.

use crate::bundle::Calibration;

const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;

#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error("need at least 2 held-out normal scores to fit a threshold, got {0}")]
    TooFew(usize),
    #[error("false-alarm rate {0} must be in (0, 0.5)")]
    Rate(f64),
}

/// Fits the threshold on normal image scores and pixel values.
pub fn calibrate(scores: &[f32], pixels: &mut [f32], rate: f64) -> Result<Calibration, CalibrationError> {
    if !(rate > 0.0 && rate < 0.5) {
        return Err(CalibrationError::Rate(rate));
    }
    if scores.len() < 2 {
        return Err(CalibrationError::TooFew(scores.len()));
    }
    let n = scores.len() as f64;
    let mean = scores.iter().map(|&s| s as f64).sum::<f64>() / n;
    let var = scores.iter().map(|&s| (s as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let std = var.sqrt().max(1e-9);
    let beta = std * 6f64.sqrt() / std::f64::consts::PI;
    let mu = mean - EULER_GAMMA * beta;
    let threshold = (mu - beta * (-(1.0 - rate).ln()).ln()) as f32;
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let flagged = scores.iter().filter(|&&s| s >= threshold).count() as f64 / n;
    Ok(Calibration {
        threshold,
        target_false_alarm_rate: rate,
        pixel_threshold: (quantile(pixels, 1.0 - rate).min(threshold) + threshold) / 2.0,
        int8_threshold: None,
        int8_pixel_threshold: None,
        fit: "gumbel".into(),
        gumbel_mu: mu,
        gumbel_beta: beta,
        normals: scores.len(),
        normal_mean: mean,
        normal_std: std,
        normal_max: max,
        normal_flagged: flagged,
        normal_scores: scores.to_vec(),
        int8_normal_scores: Vec::new(),
    })
}

/// The empirical `q` quantile (nearest rank); reorders `values`.
fn quantile(values: &mut [f32], q: f64) -> f32 {
    let k = ((values.len() as f64 * q) as usize).min(values.len() - 1);
    *values.select_nth_unstable_by(k, |a, b| a.total_cmp(b)).1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gumbel_threshold_matches_the_distribution_it_fits() {
        // Scores drawn (deterministically) from Gumbel(mu=1, beta=0.1) via the inverse CDF.
        let scores: Vec<f32> = (1..2000)
            .map(|i| {
                let u = i as f64 / 2000.0;
                (1.0 - 0.1 * (-u.ln()).ln()) as f32
            })
            .collect();
        let mut pixels = vec![0.5f32; 100];
        let c = calibrate(&scores, &mut pixels, 0.01).unwrap();
        assert!((c.pixel_threshold - (0.5 + c.threshold) / 2.0).abs() < 1e-6, "midway: {}", c.pixel_threshold);
        let want = 1.0 - 0.1 * (-(0.99f64).ln()).ln();
        assert!((c.threshold as f64 - want).abs() < 0.01, "{} vs {want}", c.threshold);
        assert!((c.normal_flagged - 0.01).abs() < 0.005);
        assert!(calibrate(&scores[..1], &mut pixels, 0.01).is_err());
    }
}
