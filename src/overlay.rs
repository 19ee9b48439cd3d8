//! Heatmap overlays a person can read: the anomaly map, coloured, blended over the image,
//! with each defect region boxed.
//!
//! Colour scale is fixed to the calibrated threshold, not to each map's own max, so overlays
//! of different frames compare: the threshold sits at the middle of the scale (green-yellow),
//! twice the threshold and above is full red, zero is transparent blue.

use image::{DynamicImage, Rgb, RgbImage, imageops::FilterType};

use crate::detector::anomaly_map::Map;
use crate::detector::verdict::Verdict;

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
    for (px, hv) in out.pixels_mut().zip(heat.pixels()) {
        let t = (hv[0] / (2.0 * verdict.threshold)).clamp(0.0, 1.0);
        let colour = ramp(t);
        // Low values stay mostly transparent so the part remains visible.
        let alpha = 0.15 + 0.45 * t;
        for c in 0..3 {
            px[c] = (px[c] as f32 * (1.0 - alpha) + colour[c] * 255.0 * alpha) as u8;
        }
    }
    for r in &verdict.regions {
        draw_box(&mut out, r.bbox, Rgb([255, 0, 0]));
    }
    out
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
