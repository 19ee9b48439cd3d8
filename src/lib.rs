//! dskd: unsupervised visual anomaly detection on production lines with dual-student
//! knowledge distillation (DSKD).
//!
//! # Layout
//!
//! The data flow is one-way; each module is named for its step:
//!
//! ```text
//!  image ─► preprocess ─► detector (tract: T ∥ Se→Sd) ─► anomaly_map ─► verdict ─► overlay / JSON
//!                ▲                    ▲
//!                │                    └─ bundle (manifest, sha256, golden parity)
//!  dskd-train ───┘ (feature `train`: burn nets, loss, ONNX export, int8, calibration)
//! ```
//!
//! - [`preprocess`]: the single definition of resize + normalisation (trainer and daemon).
//! - [`augment`]: flipped and turned copies of normal images (training and memory bank).
//! - [`bundle`]: the model bundle on disk: manifest, hashes, golden samples.
//! - [`signing`]: ed25519 signatures of bundles, and the keys a line trusts.
//! - [`detector`]: the only module that runs tract; anomaly maps and verdicts.
//! - [`dataset`]: split files, and resized copies of them (`dskd resize`).
//! - [`bench`]: `dskd bench`, every stage timed beside the onnxruntime reference.
//! - [`eval`]: `dskd eval`: image/pixel AUROC, AUPRO, F1-max, threshold rates, plots.
//! - [`synth`]: deterministic procedural images of one surface, with defects and masks.
//! - [`overlay`]: heatmap overlays people can read.
//! - `train` (feature `train`): the trainer behind `dskd-train`.

pub mod augment;
pub mod backoff;
pub mod bench;
pub mod bundle;
pub mod calibrate;
pub mod config;
pub mod dataset;
pub mod detector;
pub mod drift;
pub mod eval;
pub mod fuzzing;
pub mod metrics;
pub mod overlay;
pub mod pipeline;
pub mod preprocess;
pub mod progress;
pub mod queue;
pub mod review;
pub mod service;
pub mod signing;
pub mod sink;
pub mod source;
pub mod synth;
pub mod tiling;
#[cfg(feature = "train")]
pub mod train;
pub mod verify;

/// An error and its causes on one line, as the binaries print it: like anyhow's `{:#}`, but a
/// cause whose text the line already holds is left out. Our typed errors show their source
/// in their own message (the daemon logs them with `Display`), so `{:#}` would say "No such
/// file or directory" twice.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.is_empty() {
            line = text;
        } else if !line.contains(&text) {
            line = format!("{line}: {text}");
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{path}: {source}")]
    struct Read {
        path: String,
        source: std::io::Error,
    }

    #[test]
    fn error_line_says_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let e = anyhow::Error::new(Read { path: "a.png".into(), source: io }).context("reading frames");
        assert_eq!(format!("{e:#}"), "reading frames: a.png: No such file or directory: No such file or directory");
        assert_eq!(error_line(&e), "reading frames: a.png: No such file or directory");
        let plain = anyhow::anyhow!("disk full").context("writing x.jpg");
        assert_eq!(error_line(&plain), "writing x.jpg: disk full");
    }
}
