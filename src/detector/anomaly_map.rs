//! Teacher-vs-student discrepancy -> one anomaly map per image.
//!
//! Steps (DESIGN.md §3), shapes for one image:
//! 1. per pyramid level and student: `1 - cos(T, S)` over channels, `[C, h, w] x 2 -> [h, w]`;
//! 2. bilinear upsample (half-pixel centres, like `align_corners=false`) to `[H, W]`;
//! 3. fuse all level/student maps ([`Fusion`], default sum);
//! 4. Gaussian blur, sigma 4, kernel `2*ceil(4 sigma)+1` taps (33), reflect borders;
//! 5. image score = max of the map (or the mean of its top-k values).
//!
//! The trainer computes its golden maps with these same functions, so serving and training
//! share one definition; only the features differ (burn vs tract).

use serde::{Deserialize, Serialize};

/// One feature map, `[channels, height, width]`, planar.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureMap {
    pub data: Vec<f32>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

/// A single-channel map `[height, width]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Map {
    pub data: Vec<f32>,
    pub height: usize,
    pub width: usize,
}

/// How the per-level, per-student maps are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Fusion {
    #[default]
    Sum,
    Mean,
    Product,
    Max,
}

/// How the image score is read off the map.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ScoreMode {
    #[default]
    Max,
    /// Mean of the `k` largest values: steadier than the max against single hot pixels.
    TopKMean { k: usize },
}

/// Map settings stored in the bundle manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapSettings {
    pub fusion: Fusion,
    /// Gaussian sigma in input pixels; 0 disables the blur.
    pub sigma: f32,
    pub score: ScoreMode,
}

impl Default for MapSettings {
    fn default() -> Self {
        Self { fusion: Fusion::Sum, sigma: 4.0, score: ScoreMode::Max }
    }
}

/// `1 - cos(t, s)` per pixel over channels; `[C,h,w] x 2 -> [h,w]`.
pub fn cosine_distance(t: &FeatureMap, s: &FeatureMap) -> Map {
    assert_eq!(
        (t.channels, t.height, t.width),
        (s.channels, s.height, s.width),
        "teacher and student levels must have the same shape"
    );
    let plane = t.height * t.width;
    let mut dot = vec![0.0f32; plane];
    let mut tt = vec![0.0f32; plane];
    let mut ss = vec![0.0f32; plane];
    for c in 0..t.channels {
        let tc = &t.data[c * plane..(c + 1) * plane];
        let sc = &s.data[c * plane..(c + 1) * plane];
        for i in 0..plane {
            dot[i] += tc[i] * sc[i];
            tt[i] += tc[i] * tc[i];
            ss[i] += sc[i] * sc[i];
        }
    }
    // Same epsilon handling as torch.nn.functional.cosine_similarity (eps = 1e-8).
    let data = (0..plane).map(|i| 1.0 - dot[i] / (tt[i].sqrt().max(1e-8) * ss[i].sqrt().max(1e-8))).collect();
    Map { data, height: t.height, width: t.width }
}

/// Bilinear resize with half-pixel centres (`align_corners = false`), edges clamped.
pub fn upsample_bilinear(m: &Map, out_h: usize, out_w: usize) -> Map {
    let axis = |n_in: usize, n_out: usize| -> Vec<(usize, usize, f32)> {
        let scale = n_in as f32 / n_out as f32;
        (0..n_out)
            .map(|o| {
                let src = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (src.floor() as usize).min(n_in - 1);
                let i1 = (i0 + 1).min(n_in - 1);
                (i0, i1, src - i0 as f32)
            })
            .collect()
    };
    let ys = axis(m.height, out_h);
    let xs = axis(m.width, out_w);
    let mut data = Vec::with_capacity(out_h * out_w);
    for &(y0, y1, fy) in &ys {
        let r0 = &m.data[y0 * m.width..(y0 + 1) * m.width];
        let r1 = &m.data[y1 * m.width..(y1 + 1) * m.width];
        for &(x0, x1, fx) in &xs {
            let top = r0[x0] + (r0[x1] - r0[x0]) * fx;
            let bottom = r1[x0] + (r1[x1] - r1[x0]) * fx;
            data.push(top + (bottom - top) * fy);
        }
    }
    Map { data, height: out_h, width: out_w }
}

/// A normalised 1-D Gaussian kernel with `2*ceil(4 sigma)+1` taps.
pub fn gaussian_kernel(sigma: f32) -> Vec<f32> {
    let radius = (4.0 * sigma).ceil() as i32;
    let k: Vec<f32> = (-radius..=radius).map(|x| (-(x * x) as f32 / (2.0 * sigma * sigma)).exp()).collect();
    let sum: f32 = k.iter().sum();
    k.into_iter().map(|v| v / sum).collect()
}

/// Reflect-101 index (`dcb|abcd|cba`), as scipy/torch "reflect" padding.
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let mut j = i.rem_euclid(period);
    if j >= n {
        j = period - j;
    }
    j as usize
}

/// Separable Gaussian blur with reflect borders; `sigma <= 0` returns the map unchanged.
pub fn gaussian_blur(m: &Map, sigma: f32) -> Map {
    if sigma <= 0.0 {
        return m.clone();
    }
    let k = gaussian_kernel(sigma);
    let r = (k.len() / 2) as isize;
    let (h, w) = (m.height, m.width);
    let mut tmp = vec![0.0f32; h * w];
    for y in 0..h {
        let row = &m.data[y * w..(y + 1) * w];
        for x in 0..w {
            let mut acc = 0.0;
            for (j, kv) in k.iter().enumerate() {
                acc += kv * row[reflect(x as isize + j as isize - r, w)];
            }
            tmp[y * w + x] = acc;
        }
    }
    let mut out = vec![0.0f32; h * w];
    for y in 0..h {
        for (j, kv) in k.iter().enumerate() {
            let src = reflect(y as isize + j as isize - r, h);
            let (dst_row, src_row) = (&mut out[y * w..(y + 1) * w], &tmp[src * w..(src + 1) * w]);
            for x in 0..w {
                dst_row[x] += kv * src_row[x];
            }
        }
    }
    Map { data: out, height: h, width: w }
}

/// Combines equally sized maps.
pub fn fuse(maps: &[Map], fusion: Fusion) -> Map {
    let first = &maps[0];
    let mut data = first.data.clone();
    for m in &maps[1..] {
        for (acc, v) in data.iter_mut().zip(&m.data) {
            *acc = match fusion {
                Fusion::Sum | Fusion::Mean => *acc + v,
                Fusion::Product => *acc * v,
                Fusion::Max => acc.max(*v),
            };
        }
    }
    if fusion == Fusion::Mean {
        let n = maps.len() as f32;
        data.iter_mut().for_each(|v| *v /= n);
    }
    Map { data, height: first.height, width: first.width }
}

/// The image score of a finished map.
pub fn score(m: &Map, mode: ScoreMode) -> f32 {
    match mode {
        ScoreMode::Max => m.data.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        ScoreMode::TopKMean { k } => {
            let mut v = m.data.clone();
            let k = k.clamp(1, v.len());
            v.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
            v[..k].iter().sum::<f32>() / k as f32
        }
    }
}

/// The whole map for one image: `teacher[i]` is compared with every student's level `i`.
pub fn anomaly_map(
    teacher: &[FeatureMap],
    students: &[&[FeatureMap]],
    settings: &MapSettings,
    out_h: usize,
    out_w: usize,
) -> Map {
    let mut maps = Vec::with_capacity(teacher.len() * students.len());
    for student in students {
        for (t, s) in teacher.iter().zip(student.iter()) {
            maps.push(upsample_bilinear(&cosine_distance(t, s), out_h, out_w));
        }
    }
    gaussian_blur(&fuse(&maps, settings.fusion), settings.sigma)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fm(data: Vec<f32>, c: usize, h: usize, w: usize) -> FeatureMap {
        FeatureMap { data, channels: c, height: h, width: w }
    }

    #[test]
    fn cosine_distance_is_zero_for_parallel_and_two_for_opposite() {
        let t = fm(vec![1.0, 2.0, 3.0, -4.0], 2, 1, 2);
        let same = fm(vec![2.0, 4.0, 6.0, -8.0], 2, 1, 2);
        let opposite = fm(vec![-1.0, -2.0, -3.0, 4.0], 2, 1, 2);
        assert!(cosine_distance(&t, &same).data.iter().all(|v| v.abs() < 1e-6));
        assert!(cosine_distance(&t, &opposite).data.iter().all(|v| (v - 2.0).abs() < 1e-6));
    }

    #[test]
    fn upsample_matches_half_pixel_bilinear() {
        // torch: F.interpolate([[0, 1]], size=4, mode="bilinear", align_corners=False)
        // gives [0, 0.25, 0.75, 1] along the row.
        let m = Map { data: vec![0.0, 1.0], height: 1, width: 2 };
        let up = upsample_bilinear(&m, 1, 4);
        let want = [0.0, 0.25, 0.75, 1.0];
        for (a, b) in up.data.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{:?}", up.data);
        }
    }

    #[test]
    fn blur_keeps_mass_of_a_constant_map_and_spreads_a_peak() {
        assert_eq!(gaussian_kernel(4.0).len(), 33);
        let flat = Map { data: vec![3.0; 64 * 64], height: 64, width: 64 };
        assert!(gaussian_blur(&flat, 4.0).data.iter().all(|v| (v - 3.0).abs() < 1e-4));
        let mut peak = Map { data: vec![0.0; 64 * 64], height: 64, width: 64 };
        peak.data[32 * 64 + 32] = 1.0;
        let b = gaussian_blur(&peak, 4.0);
        assert!(b.data[32 * 64 + 32] < 0.02 && b.data[32 * 64 + 36] > 0.0);
        assert!((b.data.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    }

    #[test]
    fn top_k_mean_averages_the_largest_values() {
        let m = Map { data: vec![1.0, 5.0, 3.0, 4.0], height: 2, width: 2 };
        assert_eq!(score(&m, ScoreMode::Max), 5.0);
        assert_eq!(score(&m, ScoreMode::TopKMean { k: 2 }), 4.5);
    }
}
