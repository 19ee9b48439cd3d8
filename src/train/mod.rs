//! The trainer behind `dskd-train` (feature `train`), laid out like anomalib's models:
//!
//! - [`nets`]: the bare networks (teacher, Se, DF embedding, Sd);
//! - [`weights`]: pretrained teacher weights (torchvision layout, safetensors);
//! - [`loss`]: the distillation loss;
//! - [`data`]: good images from a folder or a split file;
//! - [`trainer`]: glue: the training loop, checkpoints, the kept model;
//! - [`export`] + [`onnx`]: modules to ONNX with our own writer; [`quantize`]: int8 QDQ;
//! - [`bundle_writer`]: the bundle on disk, checked against tract before it is written, with
//!   the threshold from held-out normals ([`crate::calibrate`]).

pub mod bundle_writer;
pub mod data;
pub mod export;
pub mod loss;
pub mod nets;
pub mod onnx;
pub mod quantize;
pub mod trainer;
pub mod weights;
