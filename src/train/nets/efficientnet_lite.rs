//! EfficientNet-Lite0 and -Lite2 up to the third pyramid tap: teachers (ImageNet top-1 ~75%
//! and ~77.6%, against MobileNetV2's ~72%; Lite0 at about MobileNetV2's cost, Lite2 wider and
//! deeper) and, with random weights, their Se.
//!
//! The Lite variants are MobileNetV2's inverted residual blocks with 5x5 depthwise kernels in
//! some stages, ReLU6 and no squeeze-excitation, trained in TensorFlow: TF "same" padding and
//! BatchNorm epsilon 1e-3 ([`Style::TF`]). Taps at strides 4 / 8 / 16: Lite0 the ends of
//! blocks 2 / 4 / 10 (24 / 40 / 112 channels), Lite2 of blocks 3 / 6 / 14 (24 / 48 / 120).
//! Parameter names follow EfficientNet-PyTorch (`_conv_stem`, `_bn0`,
//! `_blocks.N._expand_conv`, ...), the layout of the published weights.

use burn::prelude::*;

use super::layers::{Act, ConvBn, Style};
use super::mobilenet_v2::{InvertedResidual, TapPoints, forward_taps, layers_in_order};

/// One member of the family: its stages, truncated after the stage that holds the last tap,
/// and where the taps are.
#[derive(Debug)]
pub struct Variant {
    /// (expansion t, depthwise kernel k, output channels c, repeats n, first stride s).
    pub stages: &'static [(usize, usize, usize, usize, usize)],
    /// Block indices (0-based) whose outputs are the pyramid taps.
    pub taps: [usize; 3],
    pub tap_channels: [usize; 3],
    pub tap_strides: [usize; 3],
}

pub const LITE0: Variant = Variant {
    stages: &[(1, 3, 16, 1, 1), (6, 3, 24, 2, 2), (6, 5, 40, 2, 2), (6, 3, 80, 3, 2), (6, 5, 112, 3, 1)],
    taps: [2, 4, 10],
    tap_channels: [24, 40, 112],
    tap_strides: [4, 8, 16],
};

/// Lite0 tapped one octave down, like MobileNetV2's `S32`: the ends of blocks 4 / 10 / 14
/// (strides 8 / 16 / 32; 40 / 112 / 192 channels), so stage 6 is kept.
pub const LITE0_S32: Variant = Variant {
    stages: &[
        (1, 3, 16, 1, 1),
        (6, 3, 24, 2, 2),
        (6, 5, 40, 2, 2),
        (6, 3, 80, 3, 2),
        (6, 5, 112, 3, 1),
        (6, 5, 192, 4, 2),
    ],
    taps: [4, 10, 14],
    tap_channels: [40, 112, 192],
    tap_strides: [8, 16, 32],
};

/// Lite0's stages 1.1x as wide (rounded to multiples of 8) and 1.2x as deep (rounded up).
pub const LITE2: Variant = Variant {
    stages: &[(1, 3, 16, 1, 1), (6, 3, 24, 3, 2), (6, 5, 48, 3, 2), (6, 3, 88, 4, 2), (6, 5, 120, 4, 1)],
    taps: [3, 6, 14],
    tap_channels: [24, 48, 120],
    tap_strides: [4, 8, 16],
};
/// The input normalisation the weights were trained with: `(x*255 - 127) / 128` on RGB.
pub const MEAN: [f32; 3] = [127.0 / 255.0; 3];
pub const STD: [f32; 3] = [128.0 / 255.0; 3];

#[derive(Module, Debug)]
pub struct EfficientNetLite {
    pub stem: ConvBn,
    pub blocks: Vec<InvertedResidual>,
    /// Blocks whose outputs are the pyramid taps.
    #[module(skip)]
    pub taps: TapPoints,
}

impl EfficientNetLite {
    /// Random init (Se, or the teacher before its weights are loaded).
    pub fn new(variant: &Variant, device: &Device) -> Self {
        let stem = ConvBn::styled(3, 32, 3, 2, 1, Act::Relu6, Style::TF, device);
        let mut blocks = Vec::new();
        let mut cin = 32;
        for &(t, k, c, n, s) in variant.stages {
            for i in 0..n {
                blocks.push(InvertedResidual::new(cin, c, if i == 0 { s } else { 1 }, t, k, Style::TF, device));
                cin = c;
            }
        }
        Self { stem, blocks, taps: TapPoints { blocks: variant.taps, expanded: false } }
    }

    /// The three tap outputs.
    pub fn forward(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        forward_taps(&self.stem, &self.blocks, x, &self.taps)
    }

    /// EfficientNet-PyTorch (conv, bn) name prefixes of every ConvBn, in
    /// [`layers_mut`](Self::layers_mut) order. A block without expansion has no
    /// `_expand_conv`/`_bn0`; its depthwise BN is still `_bn1`.
    pub fn param_names(&self) -> Vec<(String, String)> {
        let mut out = vec![("_conv_stem".to_string(), "_bn0".to_string())];
        for (i, block) in self.blocks.iter().enumerate() {
            let b = format!("_blocks.{i}");
            if block.layers.len() == 3 {
                out.push((format!("{b}._expand_conv"), format!("{b}._bn0")));
            }
            out.push((format!("{b}._depthwise_conv"), format!("{b}._bn1")));
            out.push((format!("{b}._project_conv"), format!("{b}._bn2")));
        }
        out
    }

    /// Every ConvBn in forward order, for loading weights.
    pub fn layers_mut(&mut self) -> Vec<&mut ConvBn> {
        layers_in_order(&mut self.stem, &mut self.blocks)
    }
}
