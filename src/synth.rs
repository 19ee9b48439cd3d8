//! `dskd synth`: deterministic procedural images of one surface, brushed and grit-blasted
//! aluminium, with scratch, spot and crack defects and their pixel masks.
//!
//! Every image is a pure function of `(seed, index)`: the same command gives the same bytes on
//! every machine, so tests and the demo bundle can rely on them. The texture is fractal value
//! noise (grit) plus streaks stretched along x (brushing) plus a soft illumination gradient;
//! each image shifts the noise origin and the lighting a little, like parts on a line.
//!
//! Output layout (MVTec-style, as `dskd eval` reads it):
//! `train/good/*.png`, `test/good/*.png`, `test/<kind>/*.png`, `ground_truth/<kind>/*_mask.png`.

use std::path::Path;

use image::{GrayImage, Luma};

/// Kinds of synthetic defect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defect {
    Scratch,
    Spot,
    Crack,
}

impl Defect {
    pub const ALL: [Defect; 3] = [Defect::Scratch, Defect::Spot, Defect::Crack];

    pub fn name(self) -> &'static str {
        match self {
            Defect::Scratch => "scratch",
            Defect::Spot => "spot",
            Defect::Crack => "crack",
        }
    }
}

/// A small deterministic generator (splitmix64), so images do not depend on a crate's RNG.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Lattice value in [-1, 1] for integer coordinates.
fn lattice(seed: u64, x: i64, y: i64) -> f32 {
    let h = mix(seed ^ mix((x as u64).wrapping_mul(0x1000_0000_01B3) ^ (y as u64).rotate_left(32)));
    (h >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

/// Smooth value noise at real coordinates.
fn value_noise(seed: u64, x: f32, y: f32) -> f32 {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let (sx, sy) = (fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy));
    let (ix, iy) = (x0 as i64, y0 as i64);
    let top = lattice(seed, ix, iy) * (1.0 - sx) + lattice(seed, ix + 1, iy) * sx;
    let bottom = lattice(seed, ix, iy + 1) * (1.0 - sx) + lattice(seed, ix + 1, iy + 1) * sx;
    top * (1.0 - sy) + bottom * sy
}

/// A defect-free surface image of `size x size` pixels for image `index`.
pub fn normal(seed: u64, index: u64, size: u32) -> GrayImage {
    let mut rng = Rng::new(seed.wrapping_mul(1_000_003).wrapping_add(index));
    let (ox, oy) = (rng.range(0.0, 1000.0), rng.range(0.0, 1000.0));
    let base = rng.range(118.0, 138.0);
    let (gx, gy) = (rng.range(-12.0, 12.0), rng.range(-12.0, 12.0));
    let scale = 256.0 / size as f32; // keep the texture's physical scale across sizes
    GrayImage::from_fn(size, size, |px, py| {
        let (x, y) = (px as f32 * scale + ox, py as f32 * scale + oy);
        let mut grit = 0.0;
        let mut amp = 1.0;
        for octave in 0..4u64 {
            let f = 0.125 * (1 << octave) as f32;
            grit += amp * value_noise(seed ^ octave, x * f, y * f);
            amp *= 0.5;
        }
        let brushing = value_noise(seed ^ 77, x * 0.01, y * 0.9) + 0.5 * value_noise(seed ^ 78, x * 0.02, y * 2.1);
        let (u, v) = (px as f32 / size as f32 - 0.5, py as f32 / size as f32 - 0.5);
        let v = base + 14.0 * grit + 9.0 * brushing + gx * u + gy * v;
        Luma([v.clamp(0.0, 255.0) as u8])
    })
}

/// How the defects look: their size and brightness change as factors of the defaults (1, 1).
/// Smaller, fainter defects make a harder set (`dskd synth --defect-scale 0.3
/// --defect-contrast 0.4`), where a detector's losses on small defects show.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DefectLook {
    pub scale: f32,
    pub contrast: f32,
}

impl Default for DefectLook {
    fn default() -> Self {
        Self { scale: 1.0, contrast: 1.0 }
    }
}

/// A defective image and its mask (255 = defect) for image `index`.
pub fn defective(seed: u64, index: u64, size: u32, kind: Defect) -> (GrayImage, GrayImage) {
    defective_with(seed, index, size, kind, DefectLook::default())
}

/// [`defective`] with defects of the given look.
pub fn defective_with(seed: u64, index: u64, size: u32, kind: Defect, look: DefectLook) -> (GrayImage, GrayImage) {
    let mut img = normal(seed, 1_000_000 + index, size);
    let mut rng = Rng::new(seed ^ mix(index + 17) ^ kind as u64);
    // Sizes scale with `look.scale`: `s` for lengths and radii, `line` for stroke widths (shrunk
    // lines kept at half a pixel; the default look is left as it always was, at any size).
    let s = size as f32 * look.scale;
    let line = |w: f32| {
        let px = w * size as f32 / 256.0 * look.scale;
        if look.scale < 1.0 { px.max(0.5) } else { px }
    };
    let full = size as f32;
    // alpha[i] in [0, 1] is the defect's coverage of pixel i; delta its brightness change.
    let mut alpha = vec![0.0f32; (size * size) as usize];
    let delta = match kind {
        Defect::Scratch => {
            let (cx, cy) = (rng.range(0.25, 0.75) * full, rng.range(0.25, 0.75) * full);
            let angle = rng.range(0.0, std::f32::consts::PI);
            let half = rng.range(0.15, 0.3) * s;
            let (dx, dy) = (angle.cos() * half, angle.sin() * half);
            stroke(&mut alpha, size, &[(cx - dx, cy - dy), (cx + dx, cy + dy)], line(1.2));
            70.0
        }
        Defect::Spot => {
            let (cx, cy) = (rng.range(0.2, 0.8) * full, rng.range(0.2, 0.8) * full);
            let (rx, ry) = (rng.range(0.025, 0.06) * s, rng.range(0.025, 0.06) * s);
            for (i, a) in alpha.iter_mut().enumerate() {
                let (x, y) = ((i as u32 % size) as f32 + 0.5, (i as u32 / size) as f32 + 0.5);
                let d = ((x - cx) / rx).powi(2) + ((y - cy) / ry).powi(2);
                *a = (1.5 - d).clamp(0.0, 1.0);
            }
            -75.0
        }
        Defect::Crack => {
            let mut p = (rng.range(0.2, 0.8) * full, rng.range(0.2, 0.8) * full);
            let mut heading = rng.range(0.0, 2.0 * std::f32::consts::PI);
            let mut points = vec![p];
            for _ in 0..24 {
                heading += rng.range(-0.7, 0.7);
                let step = rng.range(0.01, 0.025) * s;
                p = (
                    (p.0 + heading.cos() * step).clamp(0.0, full - 1.0),
                    (p.1 + heading.sin() * step).clamp(0.0, full - 1.0),
                );
                points.push(p);
            }
            stroke(&mut alpha, size, &points, line(1.0));
            -90.0
        }
    } * look.contrast;
    let mut mask = GrayImage::new(size, size);
    for (i, a) in alpha.iter().enumerate() {
        let (x, y) = (i as u32 % size, i as u32 / size);
        let px = img.get_pixel_mut(x, y);
        px[0] = (px[0] as f32 + delta * a).clamp(0.0, 255.0) as u8;
        if *a > 0.25 {
            mask.put_pixel(x, y, Luma([255]));
        }
    }
    (img, mask)
}

/// Draws an anti-aliased polyline of half-width `half_width` into `alpha`.
fn stroke(alpha: &mut [f32], size: u32, points: &[(f32, f32)], half_width: f32) {
    for seg in points.windows(2) {
        let ((ax, ay), (bx, by)) = (seg[0], seg[1]);
        let (vx, vy) = (bx - ax, by - ay);
        let len2 = (vx * vx + vy * vy).max(1e-6);
        let pad = half_width + 2.0;
        let (x0, x1) = ((ax.min(bx) - pad).max(0.0) as u32, ((ax.max(bx) + pad) as u32).min(size - 1));
        let (y0, y1) = ((ay.min(by) - pad).max(0.0) as u32, ((ay.max(by) + pad) as u32).min(size - 1));
        for y in y0..=y1 {
            for x in x0..=x1 {
                let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                let t = (((px - ax) * vx + (py - ay) * vy) / len2).clamp(0.0, 1.0);
                let d = ((px - ax - t * vx).powi(2) + (py - ay - t * vy).powi(2)).sqrt();
                let a = (half_width + 0.5 - d).clamp(0.0, 1.0);
                let cell = &mut alpha[(y * size + x) as usize];
                *cell = cell.max(a);
            }
        }
    }
}

/// How many images of each role `write_dataset` makes.
#[derive(Debug, Clone, Copy)]
pub struct SynthCounts {
    pub train: u64,
    pub test_good: u64,
    /// Per defect kind.
    pub test_defect: u64,
}

/// Writes a full MVTec-style data set under `out`; returns the number of files written.
pub fn write_dataset(out: &Path, seed: u64, size: u32, counts: SynthCounts) -> Result<usize, image::ImageError> {
    write_dataset_with(out, seed, size, counts, DefectLook::default())
}

/// [`write_dataset`] with defects of the given look.
pub fn write_dataset_with(
    out: &Path,
    seed: u64,
    size: u32,
    counts: SynthCounts,
    look: DefectLook,
) -> Result<usize, image::ImageError> {
    let mut written = 0;
    let mut save = |img: &GrayImage, rel: String| -> Result<(), image::ImageError> {
        let path = out.join(rel);
        std::fs::create_dir_all(path.parent().expect("relative path has a parent"))?;
        img.save(&path)?;
        written += 1;
        Ok(())
    };
    for i in 0..counts.train {
        save(&normal(seed, i, size), format!("train/good/{i:03}.png"))?;
    }
    for i in 0..counts.test_good {
        save(&normal(seed, 500_000 + i, size), format!("test/good/{i:03}.png"))?;
    }
    for kind in Defect::ALL {
        for i in 0..counts.test_defect {
            let (img, mask) = defective_with(seed, i, size, kind, look);
            save(&img, format!("test/{}/{i:03}.png", kind.name()))?;
            save(&mask, format!("ground_truth/{}/{i:03}_mask.png", kind.name()))?;
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_deterministic_and_differ_by_index() {
        assert_eq!(normal(7, 3, 64), normal(7, 3, 64));
        assert_ne!(normal(7, 3, 64), normal(7, 4, 64));
    }

    #[test]
    fn a_smaller_fainter_look_marks_fewer_pixels_and_changes_them_less() {
        let small = DefectLook { scale: 0.3, contrast: 0.4 };
        for kind in Defect::ALL {
            let (img, mask) = defective(1, 0, 256, kind);
            let (faint, small_mask) = defective_with(1, 0, 256, kind, small);
            let clean = normal(1, 1_000_000, 256);
            let marked = |m: &GrayImage| m.pixels().filter(|p| p[0] == 255).count();
            let change = |im: &GrayImage| im.pixels().zip(clean.pixels()).map(|(a, b)| a[0].abs_diff(b[0])).max();
            assert!(marked(&small_mask) > 0, "{kind:?}: the small defect is still marked");
            assert!(marked(&small_mask) * 2 < marked(&mask), "{kind:?}: smaller");
            assert!(change(&faint) < change(&img), "{kind:?}: fainter");
        }
        assert_eq!(defective_with(1, 0, 64, Defect::Crack, DefectLook::default()), defective(1, 0, 64, Defect::Crack));
    }

    #[test]
    fn every_defect_has_a_mask_and_changes_the_image_there() {
        for kind in Defect::ALL {
            let (img, mask) = defective(1, 0, 128, kind);
            let clean = normal(1, 1_000_000, 128);
            let marked = mask.pixels().filter(|p| p[0] == 255).count();
            assert!(marked > 20, "{kind:?}: {marked} mask pixels");
            let changed = img
                .pixels()
                .zip(clean.pixels())
                .zip(mask.pixels())
                .filter(|((a, b), m)| m[0] == 255 && a[0].abs_diff(b[0]) > 20)
                .count();
            assert!(changed * 2 > marked, "{kind:?}: {changed}/{marked} masked pixels changed");
        }
    }
}
