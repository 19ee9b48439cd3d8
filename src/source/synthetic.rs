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

pub async fn run(
    cfg: &SourceConfig,
    queue: &DropOldest<Frame>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SourceError> {
    let mut last = Instant::now();
    let mut seq = 0;
    while (cfg.frames == 0 || seq < cfg.frames) && pace(period(cfg.rate_hz), &mut last, &mut shutdown).await {
        let (size, every) = (cfg.size, cfg.defect_every);
        let (img, origin) = tokio::task::spawn_blocking(move || frame_image(seq, size, every))
            .await
            .map_err(|e| SourceError::Data(format!("synthetic frame {seq}: {e}")))?;
        if !queue.push(Frame::new(seq, img, origin)) {
            break;
        }
        seq += 1;
    }
    Ok(())
}
