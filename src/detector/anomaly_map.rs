//! Teacher-vs-student discrepancy -> one anomaly map per image.
//!
//! Steps (docs/ARCHITECTURE.md §3), shapes for one image:
//! 1. per pyramid level and student: `1 - cos(T, S)` over channels, `[C, h, w] x 2 -> [h, w]`;
//! 2. bilinear upsample (half-pixel centres, like `align_corners=false`) to `[H, W]`;
//! 3. fuse all level/student maps ([`Fusion`], default sum);
//! 4. Gaussian blur, sigma from the bundle (2 by default), kernel `2*ceil(4 sigma)+1` taps, reflect borders;
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
    /// The pyramid levels (1-based, finest first) whose discrepancies enter the map; empty
    /// (and absent in bundles older than the option): every level. Students train on every
    /// level either way; this only chooses what the map reads.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub levels: Vec<usize>,
    /// Weight of each level/student map in the fusion, `weights[level * students + student]`
    /// over every teacher level (read or not); empty (and absent in older bundles): all 1.
    /// Set at export from held-out normals (`dskd-train --level-weights spread`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weights: Vec<f32>,
}

impl Default for MapSettings {
    fn default() -> Self {
        Self { fusion: Fusion::Sum, sigma: 2.0, score: ScoreMode::Max, levels: Vec::new(), weights: Vec::new() }
    }
}

impl MapSettings {
    /// Checks the chosen levels against a teacher with `count` levels.
    pub fn check_levels(&self, count: usize) -> Result<(), String> {
        if self.levels.iter().any(|&l| l == 0 || l > count) {
            return Err(format!("{:?}: the teacher has levels 1 to {count}", self.levels));
        }
        Ok(())
    }

    /// Whether level `i` (0-based) enters the map.
    pub fn reads_level(&self, i: usize) -> bool {
        self.levels.is_empty() || self.levels.contains(&(i + 1))
    }

    /// Checks the weights against a teacher with `levels` levels and `students` students.
    pub fn check_weights(&self, levels: usize, students: usize) -> Result<(), String> {
        if !self.weights.is_empty() && self.weights.len() != levels * students {
            return Err(format!("{} map weights for {levels} levels x {students} students", self.weights.len()));
        }
        if self.weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
            return Err(format!("map weights must be finite and not negative: {:?}", self.weights));
        }
        Ok(())
    }

    /// The weight of level `i`'s (0-based) map of student `j` of `students`.
    pub fn weight(&self, i: usize, j: usize, students: usize) -> f32 {
        self.weights.get(i * students + j).copied().unwrap_or(1.0)
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
    // Channel planes in turn, zipped rather than indexed so the loop has no bounds checks and
    // vectorises.
    for (tc, sc) in t.data.chunks_exact(plane).zip(s.data.chunks_exact(plane)) {
        for ((((d, a), b), x), y) in dot.iter_mut().zip(tt.iter_mut()).zip(ss.iter_mut()).zip(tc).zip(sc) {
            *d += x * y;
            *a += x * x;
            *b += y * y;
        }
    }
    // Same epsilon handling as torch.nn.functional.cosine_similarity (eps = 1e-8).
    let data =
        dot.iter().zip(&tt).zip(&ss).map(|((d, a), b)| 1.0 - d / (a.sqrt().max(1e-8) * b.sqrt().max(1e-8))).collect();
    Map { data, height: t.height, width: t.width }
}

/// Bilinear resize with half-pixel centres (`align_corners = false`), edges clamped.
pub fn upsample_bilinear(m: &Map, out_h: usize, out_w: usize) -> Map {
    let mut data = vec![0.0; out_h * out_w];
    upsample_add(m, &mut data, out_h, out_w);
    Map { data, height: out_h, width: out_w }
}

/// Source indices and weight of each output position along one axis (half-pixel centres).
fn bilinear_axis(n_in: usize, n_out: usize) -> Vec<(usize, usize, f32)> {
    let scale = n_in as f32 / n_out as f32;
    (0..n_out)
        .map(|o| {
            let src = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(n_in - 1);
            let i1 = (i0 + 1).min(n_in - 1);
            (i0, i1, src - i0 as f32)
        })
        .collect()
}

/// Adds the bilinear upsampling of `m` to `acc` (`out_h * out_w`): rows are interpolated
/// horizontally once per source row, then every output row is a blend of two of them, a
/// loop the compiler vectorises.
fn upsample_add(m: &Map, acc: &mut [f32], out_h: usize, out_w: usize) {
    let xs = bilinear_axis(m.width, out_w);
    let wide: Vec<f32> = m
        .data
        .chunks_exact(m.width)
        .flat_map(|row| xs.iter().map(move |&(x0, x1, fx)| row[x0] + (row[x1] - row[x0]) * fx))
        .collect();
    for (&(y0, y1, fy), out) in bilinear_axis(m.height, out_h).iter().zip(acc.chunks_exact_mut(out_w)) {
        let (r0, r1) = (&wide[y0 * out_w..(y0 + 1) * out_w], &wide[y1 * out_w..(y1 + 1) * out_w]);
        for ((o, a), b) in out.iter_mut().zip(r0).zip(r1) {
            *o += a + (b - a) * fy;
        }
    }
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
/// Both passes are written as "output row += tap x shifted input row" over a padded row, so the
/// inner loops are plain multiply-adds over contiguous memory that vectorise.
pub fn gaussian_blur(m: &Map, sigma: f32) -> Map {
    if sigma <= 0.0 {
        return m.clone();
    }
    let k = gaussian_kernel(sigma);
    let r = (k.len() / 2) as isize;
    let (h, w) = (m.height, m.width);
    let mut tmp = vec![0.0f32; h * w];
    let mut padded = vec![0.0f32; w + k.len() - 1];
    for (row, out) in m.data.chunks_exact(w).zip(tmp.chunks_exact_mut(w)) {
        for (i, p) in padded.iter_mut().enumerate() {
            *p = row[reflect(i as isize - r, w)];
        }
        for (j, kv) in k.iter().enumerate() {
            for (o, v) in out.iter_mut().zip(&padded[j..j + w]) {
                *o += kv * v;
            }
        }
    }
    let mut out = vec![0.0f32; h * w];
    for (y, dst_row) in out.chunks_exact_mut(w).enumerate() {
        for (j, kv) in k.iter().enumerate() {
            let src = reflect(y as isize + j as isize - r, h);
            for (o, v) in dst_row.iter_mut().zip(&tmp[src * w..(src + 1) * w]) {
                *o += kv * v;
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
    let fused = match settings.fusion {
        Fusion::Sum | Fusion::Mean => fuse_linear(teacher, students, settings, out_h, out_w),
        Fusion::Product | Fusion::Max => {
            let mut maps = Vec::with_capacity(teacher.len() * students.len());
            for (j, student) in students.iter().enumerate() {
                for (i, (t, s)) in teacher.iter().zip(student.iter()).enumerate() {
                    if settings.reads_level(i) {
                        let mut map = upsample_bilinear(&cosine_distance(t, s), out_h, out_w);
                        scale(&mut map, settings.weight(i, j, students.len()));
                        maps.push(map);
                    }
                }
            }
            fuse(&maps, settings.fusion)
        }
    };
    gaussian_blur(&fused, settings.sigma)
}

/// Multiplies a map by `w` (skipped for the usual 1).
fn scale(m: &mut Map, w: f32) {
    if w != 1.0 {
        m.data.iter_mut().for_each(|v| *v *= w);
    }
}

/// Sum (or mean) fusion. Upsampling is linear, so the students' maps of one level are added at
/// that level's resolution and upsampled once: 3 upsamplings instead of 6, same map up to
/// float rounding.
fn fuse_linear(
    teacher: &[FeatureMap],
    students: &[&[FeatureMap]],
    settings: &MapSettings,
    out_h: usize,
    out_w: usize,
) -> Map {
    let mut acc = vec![0.0f32; out_h * out_w];
    let mut levels = 0;
    for (i, t) in teacher.iter().enumerate().filter(|(i, _)| settings.reads_level(*i)) {
        levels += 1;
        let n = students.len();
        let mut level = cosine_distance(t, &students[0][i]);
        scale(&mut level, settings.weight(i, 0, n));
        for (j, student) in students.iter().enumerate().skip(1) {
            let (other, w) = (cosine_distance(t, &student[i]), settings.weight(i, j, n));
            level.data.iter_mut().zip(&other.data).for_each(|(a, b)| *a += w * b);
        }
        upsample_add(&level, &mut acc, out_h, out_w);
    }
    if settings.fusion == Fusion::Mean {
        let n = (levels * students.len()) as f32;
        acc.iter_mut().for_each(|v| *v /= n);
    }
    Map { data: acc, height: out_h, width: out_w }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fm(data: Vec<f32>, c: usize, h: usize, w: usize) -> FeatureMap {
        FeatureMap { data, channels: c, height: h, width: w }
    }

    /// Three random three-level pyramids of one shape (teacher, Se, Sd).
    fn random_pyramids(seed: u64) -> [Vec<FeatureMap>; 3] {
        let mut rng = crate::synth::Rng::new(seed);
        let mut level = |c: usize, h: usize, w: usize| fm((0..c * h * w).map(|_| rng.unit() - 0.5).collect(), c, h, w);
        std::array::from_fn(|_| vec![level(4, 8, 8), level(6, 4, 4), level(8, 2, 2)])
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
    fn linear_fusion_before_upsampling_matches_fusing_upsampled_maps() {
        let [teacher, se, sd] = random_pyramids(3);
        for fusion in [Fusion::Sum, Fusion::Mean] {
            let settings = MapSettings { fusion, sigma: 1.0, ..MapSettings::default() };
            let fast = anomaly_map(&teacher, &[&se, &sd], &settings, 32, 32);
            let mut maps = Vec::new();
            for s in [&se, &sd] {
                for (t, s) in teacher.iter().zip(s.iter()) {
                    maps.push(upsample_bilinear(&cosine_distance(t, s), 32, 32));
                }
            }
            let slow = gaussian_blur(&fuse(&maps, fusion), 1.0);
            let worst = fast.data.iter().zip(&slow.data).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(worst < 1e-5, "{fusion:?}: {worst}");
        }
    }

    #[test]
    fn chosen_levels_are_the_only_ones_read() {
        let [teacher, se, _] = random_pyramids(5);
        for fusion in [Fusion::Sum, Fusion::Mean, Fusion::Max] {
            let two = MapSettings { fusion, sigma: 1.0, levels: vec![2, 3], ..MapSettings::default() };
            let all = MapSettings { fusion, sigma: 1.0, ..MapSettings::default() };
            let chosen = anomaly_map(&teacher, &[&se], &two, 16, 16);
            let coarse = anomaly_map(&teacher[1..], &[&se[1..]], &all, 16, 16);
            assert_eq!(chosen, coarse, "{fusion:?}");
            assert_ne!(chosen, anomaly_map(&teacher, &[&se], &all, 16, 16));
        }
    }

    #[test]
    fn weights_scale_each_level_and_student_map() {
        let [teacher, se, sd] = random_pyramids(9);
        // Only level 2's Sd map, doubled: `weights[level * students + student]`.
        let weights = vec![0.0, 0.0, 0.0, 2.0, 0.0, 0.0];
        for fusion in [Fusion::Sum, Fusion::Max] {
            let settings = MapSettings { fusion, sigma: 1.0, weights: weights.clone(), ..MapSettings::default() };
            assert!(settings.check_weights(3, 2).is_ok());
            let got = anomaly_map(&teacher, &[&se, &sd], &settings, 16, 16);
            let mut want = upsample_bilinear(&cosine_distance(&teacher[1], &sd[1]), 16, 16);
            scale(&mut want, 2.0);
            let want = gaussian_blur(&want, 1.0);
            let worst = got.data.iter().zip(&want.data).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(worst < 1e-5, "{fusion:?}: {worst}");
        }
        let wrong = MapSettings { weights: vec![1.0; 3], ..MapSettings::default() };
        assert!(wrong.check_weights(3, 2).unwrap_err().contains("3 map weights for 3 levels x 2 students"));
    }

    #[test]
    fn top_k_mean_averages_the_largest_values() {
        let m = Map { data: vec![1.0, 5.0, 3.0, 4.0], height: 2, width: 2 };
        assert_eq!(score(&m, ScoreMode::Max), 5.0);
        assert_eq!(score(&m, ScoreMode::TopKMean { k: 2 }), 4.5);
    }
}
