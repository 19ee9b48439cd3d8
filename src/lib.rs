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
//! - [`bundle`]: the model bundle on disk: manifest, hashes, golden samples.
//! - [`detector`]: the only module that runs tract; anomaly maps and verdicts.
//! - [`dataset`]: split files, and resized copies of them (`dskd resize`).
//! - [`bench`]: `dskd bench`, every stage timed beside the onnxruntime reference.
//! - [`eval`]: `dskd eval`: image/pixel AUROC, AUPRO, F1-max, threshold rates, plots.
//! - [`synth`]: deterministic procedural images of one surface, with defects and masks.
//! - [`overlay`]: heatmap overlays people can read.
//! - `train` (feature `train`): the trainer behind `dskd-train`.

pub mod backoff;
pub mod bench;
pub mod bundle;
pub mod config;
pub mod dataset;
pub mod detector;
pub mod eval;
pub mod metrics;
pub mod overlay;
pub mod pipeline;
pub mod preprocess;
pub mod progress;
pub mod queue;
pub mod service;
pub mod sink;
pub mod source;
pub mod synth;
#[cfg(feature = "train")]
pub mod train;
pub mod verify;
