//! `synthetic`: procedural surface frames from [`crate::synth`], a defect every N frames.

use std::time::Instant;

use image::DynamicImage;
use tokio::sync::watch;

use super::{Frame, SourceError, pace, period};
use crate::config::SourceConfig;
use crate::queue::DropOldest;
use crate::synth::{self, Defect};

/// The image of frame `seq`: every `defect_every`-th frame has a defect (kinds in turn).
pub fn frame_image(seq: u64, size: u32, defect_every: u64) -> (DynamicImage, String) {
    if defect_every > 0 && seq % defect_every == defect_every - 1 {
        let kind = Defect::ALL[(seq / defect_every) as usize % 3];
        let (img, _) = synth::defective(11, seq, size, kind);
        (DynamicImage::ImageLuma8(img), format!("synthetic:{}", kind.name()))
    } else {
        (DynamicImage::ImageLuma8(synth::normal(11, seq, size)), "synthetic:good".into())
    }
}

/// The scene change of `cfg` applied to frame `seq` (see `shift_after`).
fn shifted(img: DynamicImage, seq: u64, cfg: &SourceConfig) -> DynamicImage {
    if cfg.shift_after == 0 || seq < cfg.shift_after {
        return img;
    }
    let mut gray = img.into_luma8();
    let mut rng = synth::Rng::new(seq);
    for p in gray.pixels_mut() {
        let noise = cfg.shift_noise * (2.0 * rng.unit() - 1.0);
        p.0[0] = (p.0[0] as f32 + cfg.shift_brightness + noise).clamp(0.0, 255.0) as u8;
    }
    DynamicImage::ImageLuma8(gray)
}

pub async fn run(
    cfg: &SourceConfig,
    queue: &DropOldest<Frame>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SourceError> {
    let mut last = Instant::now();
    let mut seq = 0;
    while (cfg.frames == 0 || seq < cfg.frames) && pace(period(cfg.rate_hz), &mut last, &mut shutdown).await {
        let c = cfg.clone();
        let (img, origin) = tokio::task::spawn_blocking(move || {
            let (img, origin) = frame_image(seq, c.size, c.defect_every);
            (shifted(img, seq, &c), origin)
        })
        .await
        .map_err(|e| SourceError::Data(format!("synthetic frame {seq}: {e}")))?;
        if !queue.push(Frame::new(seq, img, origin)) {
            break;
        }
        seq += 1;
    }
    Ok(())
}
