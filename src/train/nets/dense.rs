//! A dense-convolution Se (`--student-e dense`): plain 3x3 ConvBn stages instead of the
//! teacher's architecture, for teachers built from depthwise convolutions (MobileNetV2).
//!
//! Why: tract runs depthwise convolutions far below the speed of dense ones on x86 (they are
//! ~5% of MobileNetV2's multiply-adds and ~44% of its time there), while dense 3x3 convolutions
//! run as matrix products near the core's peak. This encoder has about MobileNetV2's
//! multiply-adds up to the third tap (~290 M at 256², against 274 M), all of them dense.
//!
//! Shapes at `[B, 3, H, W]`: stem 3x3/2 to `32` channels, then per tap a 3x3/2 ConvBn to the
//! stage width and a 3x3/1 one (ReLU), and a linear 1x1 ConvBn head to the tap's channels
//! (the teacher's taps are linear projections too): strides 4, 8, 16. For a teacher whose
//! finest tap is coarser (`mobilenet_v2_s32`: 8, 16, 32), the first stage halves the grid once
//! more per octave.

use burn::prelude::*;

use super::layers::{Act, ConvBn};

/// Stage widths: wider than MobileNetV2's taps (24, 32, 96), narrower than ResNet18's.
const WIDTHS: [usize; 3] = [48, 64, 128];
const STEM: usize = 32;

#[derive(Module, Debug)]
pub struct DenseEncoder {
    pub stem: ConvBn,
    /// Per tap: the stride-2 ConvBn(s) and the stride-1 one.
    pub stages: Vec<Vec<ConvBn>>,
    /// Per tap: the linear 1x1 head to the teacher's channel count.
    pub heads: Vec<ConvBn>,
}

impl DenseEncoder {
    /// Random init, with heads of the teacher's tap widths at its tap strides (each twice
    /// the one before, the first at least 4).
    pub fn new(tap_channels: [usize; 3], tap_strides: [usize; 3], device: &Device) -> Self {
        let stem = ConvBn::new(3, STEM, 3, 2, 1, Act::Relu, device);
        let mut cin = STEM;
        let mut stride = 2;
        let mut stages = Vec::new();
        let mut heads = Vec::new();
        for ((w, c), s) in WIDTHS.into_iter().zip(tap_channels).zip(tap_strides) {
            let mut stage = Vec::new();
            while stride < s {
                stage.push(ConvBn::new(cin, w, 3, 2, 1, Act::Relu, device));
                (cin, stride) = (w, stride * 2);
            }
            stage.push(ConvBn::new(w, w, 3, 1, 1, Act::Relu, device));
            stages.push(stage);
            heads.push(ConvBn::new(w, c, 1, 1, 1, Act::None, device));
            cin = w;
        }
        Self { stem, stages, heads }
    }

    /// The three tap outputs.
    pub fn forward(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        let mut x = self.stem.forward(x);
        let mut taps = Vec::with_capacity(3);
        for (stage, head) in self.stages.iter().zip(&self.heads) {
            x = stage.iter().fold(x, |x, l| l.forward(x));
            taps.push(head.forward(x.clone()));
        }
        taps
    }
}
