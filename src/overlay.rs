//! Heatmap overlays a person can read: the anomaly map, coloured, blended over the image,
//! with each defect region boxed.
//!
//! Colour scale is fixed to the calibration, not to each map's own max, so overlays of
//! different frames compare. Values up to the pixel threshold (what normal images reach) are
//! not coloured at all, so the part stays readable; from there the ramp runs blue -> yellow
//! -> red, reaching full red at the image threshold. (A scale from zero, as before, tinted
//! whole normal surfaces green on real images and left real defects only slightly warmer.)

use image::{DynamicImage, Rgb, RgbImage, imageops::FilterType};

use crate::detector::anomaly_map::Map;
use crate::detector::verdict::Verdict;

/// An overlay as JPEG bytes (the image store's files, the review queue's `overlay.jpg`).
pub fn jpeg(img: &RgbImage, quality: u8) -> Result<Vec<u8>, image::ImageError> {
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality.clamp(1, 100)).encode_image(img)?;
    Ok(bytes)
}

/// A jet-like colour ramp for `t` in [0, 1].
fn ramp(t: f32) -> [f32; 3] {
    let c = |x: f32| (1.5 - (4.0 * t - x).abs()).clamp(0.0, 1.0);
    [c(3.0), c(2.0), c(1.0)]
}

/// The image (at its own size) with the map blended over it and regions boxed in red.
pub fn render(img: &DynamicImage, map: &Map, verdict: &Verdict) -> RgbImage {
    let mut out = img.to_rgb8();
    let (w, h) = out.dimensions();
    let heat = image::ImageBuffer::<image::Luma<f32>, Vec<f32>>::from_raw(
        map.width as u32,
        map.height as u32,
        map.data.clone(),
    )
    .expect("map data matches its size");
    let heat = image::imageops::resize(&heat, w, h, FilterType::Triangle);
    let (lo, hi) = colour_scale(verdict);
    for (px, hv) in out.pixels_mut().zip(heat.pixels()) {
        if hv[0] <= lo {
            continue;
        }
        let t = ((hv[0] - lo) / (hi - lo)).clamp(0.0, 1.0);
        let colour = ramp(t);
        let alpha = 0.3 + 0.4 * t;
        for c in 0..3 {
            px[c] = (px[c] as f32 * (1.0 - alpha) + colour[c] * 255.0 * alpha) as u8;
        }
    }
    for r in &verdict.regions {
        draw_box(&mut out, r.bbox, Rgb([255, 0, 0]));
    }
    out
}

/// Map values drawn as the bottom and top of the ramp.
fn colour_scale(v: &Verdict) -> (f32, f32) {
    let hi = v.threshold;
    // A pixel threshold at or above the image threshold (or unset) would leave no ramp.
    let lo = if v.pixel_threshold.is_finite() && v.pixel_threshold < hi { v.pixel_threshold } else { 0.5 * hi };
    (lo, hi)
}

/// A 2-pixel rectangle outline, clipped to the image.
fn draw_box(img: &mut RgbImage, [x, y, bw, bh]: [u32; 4], colour: Rgb<u8>) {
    let (w, h) = img.dimensions();
    let (x1, y1) = ((x + bw).min(w) as i64 - 1, (y + bh).min(h) as i64 - 1);
    for t in 0..2i64 {
        for xx in x as i64..=x1 {
            for yy in [y as i64 + t, y1 - t] {
                if (0..h as i64).contains(&yy) && (0..w as i64).contains(&xx) {
                    img.put_pixel(xx as u32, yy as u32, colour);
                }
            }
        }
        for yy in y as i64..=y1 {
            for xx in [x as i64 + t, x1 - t] {
                if (0..h as i64).contains(&yy) && (0..w as i64).contains(&xx) {
                    img.put_pixel(xx as u32, yy as u32, colour);
                }
            }
        }
    }
}
