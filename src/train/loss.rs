//! The distillation loss (anomalib's `loss.py`, per level then summed).
//!
//! `L = Σ_students Σ_levels mean_{pixels} (1 - cos(T_l(x), S_l(x)))` with the cosine taken
//! over channels at each pixel (STFPM/RD4AD's per-pixel cosine), optionally plus
//! `w · Σ_l mean (1 - cos(Se_l, Sd_l))`, the Se–Sd agreement term (`--se-sd-weight`, off by
//! default; docs/ARCHITECTURE.md §3). With `--sd-loss flat`, Sd's terms take RD4AD's other
//! form instead: one cosine per image between the whole flattened maps, which weighs each
//! position by its feature's size rather than alike.

use burn::prelude::*;

use super::nets::students::StudentFeatures;

/// Mean over batch and pixels of `1 - cos` over channels; `[B,C,H,W] x 2 -> [1]`.
pub fn cosine_distance(t: Tensor<4>, s: Tensor<4>) -> Tensor<1> {
    let dot = (t.clone() * s.clone()).sum_dim(1);
    let nt = t.powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-8);
    let ns = s.powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-8);
    (dot / (nt * ns)).neg().add_scalar(1.0).mean()
}

/// Mean over the batch of `1 - cos` between each image's whole flattened maps; `-> [1]`.
pub fn flat_cosine_distance(t: Tensor<4>, s: Tensor<4>) -> Tensor<1> {
    let [b, c, h, w] = t.dims();
    let (t, s) = (t.reshape([b, c * h * w]), s.reshape([b, c * h * w]));
    let dot = (t.clone() * s.clone()).sum_dim(1);
    let nt = t.powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-8);
    let ns = s.powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-8);
    (dot / (nt * ns)).neg().add_scalar(1.0).mean()
}

/// How Sd's match to the teacher is measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SdLoss {
    /// Per-pixel cosine over channels, as for Se (the published method).
    #[default]
    Pixel,
    /// RD4AD's flattened form: one cosine per image over all channels and positions.
    Flat,
}

impl SdLoss {
    pub fn name(self) -> &'static str {
        match self {
            SdLoss::Pixel => "pixel",
            SdLoss::Flat => "flat",
        }
    }
}

/// The loss's settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct LossSettings {
    /// Weight of the Se–Sd agreement term (0 = off).
    pub se_sd_weight: f32,
    pub sd: SdLoss,
}

/// The full loss for one batch.
pub fn dskd_loss(teacher: &[Tensor<4>], f: &StudentFeatures, settings: LossSettings) -> Tensor<1> {
    let mut terms = Vec::new();
    for (t, s) in teacher.iter().zip(&f.e) {
        terms.push(cosine_distance(t.clone(), s.clone()));
    }
    for (t, s) in teacher.iter().zip(&f.d) {
        terms.push(match settings.sd {
            SdLoss::Pixel => cosine_distance(t.clone(), s.clone()),
            SdLoss::Flat => flat_cosine_distance(t.clone(), s.clone()),
        });
    }
    if settings.se_sd_weight > 0.0 {
        for (e, d) in f.e.iter().zip(&f.d) {
            terms.push(cosine_distance(e.clone(), d.clone()).mul_scalar(settings.se_sd_weight));
        }
    }
    terms.into_iter().reduce(|a, b| a + b).expect("at least one level")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(values: &[f32], dims: [usize; 4]) -> Tensor<4> {
        Tensor::from_data(TensorData::new(values.to_vec(), dims), &Device::flex())
    }

    #[test]
    fn flat_form_sees_what_the_per_pixel_form_ignores() {
        // Two positions, two channels: s is t with each position's feature rescaled, so every
        // per-pixel cosine is 1, but the flattened vectors point elsewhere.
        let t = tensor(&[1.0, 0.0, 0.0, 1.0], [1, 2, 1, 2]);
        let s = tensor(&[3.0, 0.0, 0.0, 1.0], [1, 2, 1, 2]);
        let pixel = cosine_distance(t.clone(), s.clone()).into_scalar::<f32>();
        let flat = flat_cosine_distance(t.clone(), s).into_scalar::<f32>();
        assert!(pixel.abs() < 1e-6, "{pixel}");
        let expected = 1.0 - 4.0 / (2.0f32.sqrt() * 10.0f32.sqrt());
        assert!((flat - expected).abs() < 1e-5, "{flat} vs {expected}");
        assert!(flat_cosine_distance(t.clone(), t).into_scalar::<f32>().abs() < 1e-6);
    }
}
