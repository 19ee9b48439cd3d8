//! Detection metrics as the anomaly-detection field defines them (MVTec AD, anomalib).
//!
//! - AUROC: the probability that a random positive scores above a random negative, ties
//!   counting one half (the Mann–Whitney U statistic over `n_pos · n_neg`).
//! - F1-max: the best F1 over every threshold that can separate the sorted scores.
//! - AUPRO: per-region overlap. At each threshold, PRO is the mean over ground-truth regions
//!   (8-connected components of the masks) of the fraction of the region's pixels at or above
//!   the threshold; FPR is the fraction of all normal pixels at or above it. AUPRO is the area
//!   under PRO(FPR) for FPR in [0, limit], divided by `limit` (0.3 by convention), so 1 is
//!   perfect and a random map scores about `limit / 2`.

/// Area under the ROC curve; `None` when one class is empty.
pub fn auroc(scores: &[f32], labels: &[bool]) -> Option<f64> {
    let pos = labels.iter().filter(|&&l| l).count();
    let neg = labels.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_unstable_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Sum of the (average, 1-based) ranks of the positives.
    let mut rank_sum = 0.0f64;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += idx[i..=j].iter().filter(|&&k| labels[k]).count() as f64 * avg_rank;
        i = j + 1;
    }
    let (p, n) = (pos as f64, neg as f64);
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

/// Walks the scores from high to low; at each distinct score (a threshold `score >= t`), the
/// cumulative (true positives, false positives) and the threshold. Tied scores are taken
/// together: no threshold can split them.
fn ranked_counts(scores: &[f32], labels: &[bool]) -> Vec<(usize, usize, f32)> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_unstable_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp, mut i) = (0, 0, 0);
    let mut out = Vec::new();
    while i < idx.len() {
        let t = scores[idx[i]];
        while i < idx.len() && scores[idx[i]] == t {
            if labels[idx[i]] {
                tp += 1
            } else {
                fp += 1
            }
            i += 1;
        }
        out.push((tp, fp, t));
    }
    out
}

/// The best F1 over all thresholds, and the threshold that gives it (`score >= t` is
/// positive); `None` without positives.
pub fn f1_max(scores: &[f32], labels: &[bool]) -> Option<(f64, f32)> {
    let pos = labels.iter().filter(|&&l| l).count();
    if pos == 0 {
        return None;
    }
    let f1 = |tp: usize, fp: usize| 2.0 * tp as f64 / (2 * tp + fp + (pos - tp)) as f64;
    ranked_counts(scores, labels).into_iter().map(|(tp, fp, t)| (f1(tp, fp), t)).fold(
        None,
        |best: Option<(f64, f32)>, (f, t)| match best {
            Some((b, _)) if b >= f => best,
            _ => Some((f, t)),
        },
    )
}

/// 8-connected components of a binary mask: a label per pixel (0 = background) and the count.
pub fn label_regions(mask: &[bool], width: usize, height: usize) -> (Vec<u32>, u32) {
    let mut labels = vec![0u32; mask.len()];
    let mut next = 0u32;
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || labels[start] != 0 {
            continue;
        }
        next += 1;
        labels[start] = next;
        stack.push(start);
        while let Some(i) = stack.pop() {
            let (x, y) = ((i % width) as i64, (i / width) as i64);
            for (dx, dy) in [(-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1)] {
                let (nx, ny) = (x + dx, y + dy);
                if nx < 0 || ny < 0 || nx >= width as i64 || ny >= height as i64 {
                    continue;
                }
                let j = ny as usize * width + nx as usize;
                if mask[j] && labels[j] == 0 {
                    labels[j] = next;
                    stack.push(j);
                }
            }
        }
    }
    (labels, next)
}

/// Accumulates pixels of many images for AUPRO: each pixel is normal (`region = None`) or
/// belongs to one ground-truth region, numbered across the whole set.
#[derive(Debug, Default, Clone)]
pub struct ProAccumulator {
    scores: Vec<f32>,
    /// 0 = normal pixel, else 1-based region id.
    region: Vec<u32>,
    region_sizes: Vec<u64>,
}

impl ProAccumulator {
    /// Adds one image: its map values and mask (same length, row-major `width`).
    pub fn add(&mut self, map: &[f32], mask: &[bool], width: usize) {
        let height = map.len() / width.max(1);
        let (labels, n) = label_regions(mask, width, height);
        let base = self.region_sizes.len() as u32;
        self.region_sizes.extend(std::iter::repeat_n(0, n as usize));
        for (&s, &l) in map.iter().zip(&labels) {
            self.scores.push(s);
            let id = if l == 0 { 0 } else { base + l };
            if id != 0 {
                self.region_sizes[id as usize - 1] += 1;
            }
            self.region.push(id);
        }
    }

    pub fn regions(&self) -> usize {
        self.region_sizes.len()
    }

    /// Normalised area under PRO(FPR) up to `fpr_limit`; `None` without regions or normal
    /// pixels.
    pub fn aupro(&self, fpr_limit: f64) -> Option<f64> {
        let negatives = self.region.iter().filter(|&&r| r == 0).count();
        let regions = self.region_sizes.len();
        if regions == 0 || negatives == 0 {
            return None;
        }
        let mut idx: Vec<usize> = (0..self.scores.len()).collect();
        idx.sort_unstable_by(|&a, &b| self.scores[b].total_cmp(&self.scores[a]));
        // Walk thresholds from high to low; at each distinct score one (FPR, PRO) point.
        let (mut fp, mut pro_sum) = (0usize, 0.0f64);
        let mut curve = vec![(0.0f64, 0.0f64)];
        let mut i = 0;
        while i < idx.len() {
            let t = self.scores[idx[i]];
            while i < idx.len() && self.scores[idx[i]] == t {
                match self.region[idx[i]] {
                    0 => fp += 1,
                    r => pro_sum += 1.0 / self.region_sizes[r as usize - 1] as f64,
                }
                i += 1;
            }
            curve.push((fp as f64 / negatives as f64, pro_sum / regions as f64));
        }
        Some(area_up_to(&curve, fpr_limit) / fpr_limit)
    }
}

/// Trapezoid area under a curve of (x, y) points sorted by x, from 0 to `limit` (the last
/// segment interpolated at `limit`).
pub fn area_up_to(curve: &[(f64, f64)], limit: f64) -> f64 {
    let mut area = 0.0;
    for w in curve.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        if x0 >= limit {
            break;
        }
        if x1 <= limit {
            area += (x1 - x0) * (y0 + y1) / 2.0;
        } else {
            let y = y0 + (y1 - y0) * (limit - x0) / (x1 - x0);
            area += (limit - x0) * (y0 + y) / 2.0;
        }
    }
    area
}

/// ROC curve points (FPR, TPR) from high thresholds to low, for plotting.
pub fn roc_curve(scores: &[f32], labels: &[bool]) -> Vec<(f64, f64)> {
    let pos = labels.iter().filter(|&&l| l).count().max(1) as f64;
    let neg = labels.iter().filter(|&&l| !l).count().max(1) as f64;
    let points = ranked_counts(scores, labels).into_iter().map(|(tp, fp, _)| (fp as f64 / neg, tp as f64 / pos));
    std::iter::once((0.0, 0.0)).chain(points).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_perfect_inverted_and_ties() {
        let labels = [false, false, true, true];
        assert_eq!(auroc(&[0.1, 0.2, 0.3, 0.4], &labels), Some(1.0));
        assert_eq!(auroc(&[0.4, 0.3, 0.2, 0.1], &labels), Some(0.0));
        // All tied: every pair counts one half.
        assert_eq!(auroc(&[0.5; 4], &labels), Some(0.5));
        // Pairs (pos, neg): (0.3 vs 0.1, 0.3 vs 0.3) -> 1 + 0.5; (0.9 vs both) -> 2. U = 3.5 / 4.
        assert_eq!(auroc(&[0.1, 0.3, 0.3, 0.9], &labels), Some(0.875));
        assert_eq!(auroc(&[0.1, 0.2], &[true, true]), None);
    }

    #[test]
    fn f1_max_by_hand() {
        // Threshold 0.8 takes the two positives and one negative: P = 2/3, R = 1, F1 = 0.8.
        let (f1, t) = f1_max(&[0.9, 0.8, 0.85, 0.1], &[true, true, false, false]).unwrap();
        assert!((f1 - 0.8).abs() < 1e-12 && t == 0.8, "{f1} {t}");
        // Tied scores cannot be split: one positive tied with three negatives at the top.
        let (f1, _) = f1_max(&[0.5, 0.5, 0.5, 0.5, 0.1], &[true, false, false, false, true]).unwrap();
        // Options: t = 0.5 -> tp 1 fp 3 fn 1 -> 2/6; t = 0.1 -> tp 2 fp 3 -> 4/7.
        assert!((f1 - 4.0 / 7.0).abs() < 1e-12, "{f1}");
    }

    #[test]
    fn regions_are_eight_connected() {
        #[rustfmt::skip]
        let m = [
            true,  false, false, false,
            false, true,  false, true,
            false, false, false, true,
        ];
        let (labels, n) = label_regions(&m, 4, 3);
        assert_eq!(n, 2, "the diagonal pair is one region, the right column another");
        assert_eq!(labels[0], labels[5]);
        assert_ne!(labels[0], labels[7]);
    }

    #[test]
    fn aupro_single_region_perfect_and_half_found() {
        // One 2-pixel region scoring above every normal pixel: PRO reaches 1 at FPR 0.
        let map = [0.9, 0.8, 0.1, 0.2, 0.3, 0.4];
        let mask = [true, true, false, false, false, false];
        let mut acc = ProAccumulator::default();
        acc.add(&map, &mask, 3);
        assert!((acc.aupro(0.3).unwrap() - 1.0).abs() < 1e-12);
        // Half the region above all normals, the other half below all of them: PRO is 0.5
        // until FPR reaches 1, so the normalised area up to 0.3 is 0.5 (less the first step
        // from (0,0) to (0,0.5), which has no width).
        let map = [0.9, 0.0, 0.1, 0.2, 0.3, 0.4];
        let mut acc = ProAccumulator::default();
        acc.add(&map, &mask, 3);
        assert!((acc.aupro(0.3).unwrap() - 0.5).abs() < 1e-12, "{:?}", acc.aupro(0.3));
    }

    #[test]
    fn aupro_weights_regions_equally_whatever_their_size() {
        // A 1-pixel region found first, then one pixel of a 3-pixel region: PRO = 1/2 + 1/6
        // (pixel counting would say 2/4: a big region must not outweigh a small one).
        let map = [0.9, 0.0, 0.0, 0.0, 0.5, 0.6, 0.7, 0.8];
        let mask = [true, false, true, true, false, false, false, true];
        // Row-major 4x2: region A = pixel 0; region B = pixels 2, 3, 7 (8-connected).
        let mut acc = ProAccumulator::default();
        acc.add(&map, &mask, 4);
        assert_eq!(acc.regions(), 2);
        let v = acc.aupro(0.3).unwrap();
        // Normals: pixels 1, 4, 5, 6 = [0.0, 0.5, 0.6, 0.7]. Pixel 7 (0.8, region B) comes
        // second: PRO = 1/2 + 1/6 at FPR 0; then FPR climbs in steps of 1/4 past 0.3.
        let expected = 0.5 + 1.0 / 6.0;
        assert!((v - expected).abs() < 1e-9, "{v} vs {expected}");
    }

    #[test]
    fn aupro_needs_regions_and_normals() {
        let mut acc = ProAccumulator::default();
        acc.add(&[0.1, 0.2], &[false, false], 2);
        assert_eq!(acc.aupro(0.3), None, "all-normal images: no regions");
    }

    #[test]
    fn area_interpolates_at_the_limit() {
        let c = [(0.0, 0.0), (0.2, 1.0), (0.6, 1.0)];
        // 0..0.2: triangle 0.1; 0.2..0.3: 0.1.
        assert!((area_up_to(&c, 0.3) - 0.2).abs() < 1e-12);
    }
}
