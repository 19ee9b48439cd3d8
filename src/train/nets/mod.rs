//! The networks: the frozen teacher, the two students and their building blocks
//! (anomalib's `torch_model.py`).

pub mod backbone;
pub mod dense;
pub mod efficientnet_lite;
pub mod layers;
pub mod mobilenet_v2;
pub mod resnet;
pub mod students;
