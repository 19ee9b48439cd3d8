//! The distillation loss (anomalib's `loss.py`, per level then summed).
//!
//! `L = Σ_students Σ_levels mean_{pixels} (1 - cos(T_l(x), S_l(x)))` with the cosine taken
//! over channels at each pixel (STFPM/RD4AD's per-pixel cosine), optionally plus
//! `w · Σ_l mean (1 - cos(Se_l, Sd_l))`, the Se–Sd agreement term (`--se-sd-weight`, off by
//! default; docs/ARCHITECTURE.md §3).

use burn::prelude::*;

use super::nets::students::StudentFeatures;

/// Mean over batch and pixels of `1 - cos` over channels; `[B,C,H,W] x 2 -> [1]`.
pub fn cosine_distance(t: Tensor<4>, s: Tensor<4>) -> Tensor<1> {
    let dot = (t.clone() * s.clone()).sum_dim(1);
    let nt = t.powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-8);
    let ns = s.powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-8);
    (dot / (nt * ns)).neg().add_scalar(1.0).mean()
}

/// The full loss for one batch.
pub fn dskd_loss(teacher: &[Tensor<4>], f: &StudentFeatures, se_sd_weight: f32) -> Tensor<1> {
    let mut terms = Vec::new();
    for student in [&f.e, &f.d] {
        for (t, s) in teacher.iter().zip(student.iter()) {
            terms.push(cosine_distance(t.clone(), s.clone()));
        }
    }
    if se_sd_weight > 0.0 {
        for (e, d) in f.e.iter().zip(&f.d) {
            terms.push(cosine_distance(e.clone(), d.clone()).mul_scalar(se_sd_weight));
        }
    }
    terms.into_iter().reduce(|a, b| a + b).expect("at least one level")
}
