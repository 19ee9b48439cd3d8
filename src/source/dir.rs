//! `dir`: replays the images of a folder in name order, once or looping, at a rate.
//! A file that does not decode is logged with its path and skipped; the replay goes on.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio::sync::watch;

use super::{Frame, SourceError, pace, period};
use crate::config::SourceConfig;
use crate::preprocess;
use crate::queue::DropOldest;

const EXTENSIONS: [&str; 8] = ["png", "jpg", "jpeg", "bmp", "pgm", "ppm", "tif", "tiff"];

/// All images under `dir` (recursively), sorted by path.
pub fn list_images(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

pub async fn run(
    cfg: &SourceConfig,
    queue: &DropOldest<Frame>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SourceError> {
    let io = |source| SourceError::Io { path: cfg.path.display().to_string(), source };
    let files = list_images(&cfg.path).map_err(io)?;
    if files.is_empty() {
        return Err(SourceError::Data(format!("{}: no images to replay", cfg.path.display())));
    }
    let mut last = Instant::now();
    let mut seq = 0;
    loop {
        for path in &files {
            if !pace(period(cfg.rate_hz), &mut last, &mut shutdown).await {
                return Ok(());
            }
            let p = path.clone();
            let decoded = tokio::task::spawn_blocking(move || preprocess::load_image(&p))
                .await
                .map_err(|e| SourceError::Data(format!("{}: {e}", path.display())))?;
            match decoded {
                Ok(img) => {
                    if !queue.push(Frame::new(seq, img, path.display().to_string())) {
                        return Ok(());
                    }
                    seq += 1;
                }
                Err(e) => tracing::warn!(error = %e, "skipping frame"),
            }
        }
        if !cfg.r#loop {
            return Ok(());
        }
    }
}
