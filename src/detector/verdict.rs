//! Map + calibration -> verdict: defect or not, and where.
//!
//! An image is a defect when its score reaches the calibrated image threshold. Its regions are
//! the 8-connected components of pixels at or above the pixel threshold whose peak reaches the
//! image threshold, so every reported region is one that alone would have raised the alarm.
//! Boxes and areas are given in source-image pixels.

use serde::Serialize;

use super::anomaly_map::Map;

/// One connected defect region.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Region {
    /// `[x, y, width, height]` in source pixels.
    pub bbox: [u32; 4],
    /// Area in source pixels.
    pub area: u64,
    /// Highest map value in the region.
    pub peak: f32,
}

/// The decision for one image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub score: f32,
    pub threshold: f32,
    pub defect: bool,
    /// `score / threshold`: above 1 is a defect.
    pub severity: f32,
    pub regions: Vec<Region>,
    /// The pixel threshold the regions were cut at (for overlays; not part of the event).
    #[serde(skip)]
    pub pixel_threshold: f32,
}

/// Decides on one map; `src_w`/`src_h` are the source image size for boxes and areas.
pub fn decide(map: &Map, score: f32, threshold: f32, pixel_threshold: f32, src_w: u32, src_h: u32) -> Verdict {
    let defect = score >= threshold;
    let regions = if defect { regions(map, pixel_threshold, threshold, src_w, src_h) } else { Vec::new() };
    Verdict { score, threshold, defect, severity: score / threshold, regions, pixel_threshold }
}

/// Connected components (8-neighbourhood) above `pixel_thr` whose peak reaches `peak_thr`,
/// largest first.
pub fn regions(map: &Map, pixel_thr: f32, peak_thr: f32, src_w: u32, src_h: u32) -> Vec<Region> {
    let (h, w) = (map.height, map.width);
    let sx = src_w as f64 / w as f64;
    let sy = src_h as f64 / h as f64;
    let mut seen = vec![false; h * w];
    let mut out = Vec::new();
    let mut stack = Vec::new();
    for start in 0..h * w {
        if seen[start] || map.data[start] < pixel_thr {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
        let (mut count, mut peak) = (0u64, f32::NEG_INFINITY);
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            count += 1;
            peak = peak.max(map.data[i]);
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                    if nx < 0 || ny < 0 || nx >= w as i64 || ny >= h as i64 {
                        continue;
                    }
                    let j = ny as usize * w + nx as usize;
                    if !seen[j] && map.data[j] >= pixel_thr {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        if peak >= peak_thr {
            let bx = (x0 as f64 * sx).floor() as u32;
            let by = (y0 as f64 * sy).floor() as u32;
            let bw = (((x1 + 1) as f64 * sx).ceil() as u32).min(src_w) - bx;
            let bh = (((y1 + 1) as f64 * sy).ceil() as u32).min(src_h) - by;
            let area = (count as f64 * sx * sy).round() as u64;
            out.push(Region { bbox: [bx, by, bw, bh], area, peak });
        }
    }
    out.sort_by_key(|r| std::cmp::Reverse(r.area));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_blobs_one_below_peak_threshold() {
        let mut data = vec![0.0f32; 8 * 8];
        for (x, y) in [(1, 1), (2, 1), (2, 2)] {
            data[y * 8 + x] = 5.0; // peak reaches 4
        }
        data[6 * 8 + 6] = 2.0; // above pixel thr, below peak thr
        let map = Map { data, height: 8, width: 8 };
        let r = regions(&map, 1.0, 4.0, 16, 16);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].bbox, [2, 2, 4, 4], "scaled x2 to source pixels");
        assert_eq!(r[0].area, 12);
        let v = decide(&map, 5.0, 4.0, 1.0, 16, 16);
        assert!(v.defect && (v.severity - 1.25).abs() < 1e-6);
        assert!(decide(&map, 3.0, 4.0, 1.0, 16, 16).regions.is_empty());
    }
}
