//! MobileNetV2 (torchvision layout) up to its last pyramid tap: the teacher (pretrained,
//! frozen) and the encoder-like student Se (same architecture, random init).
//!
//! Three tap sets, one network ([`Variant`]): the default taps the linear bottlenecks at the
//! ends of `features.3` / `.6` / `.13` (`[B, 24|32|96, H/4|8|16, W/4|8|16]`); `expanded`
//! taps the 6x wider ReLU6 expansions at the start of the next blocks (`features.4` / `.7` /
//! `.14`, 144 / 192 / 576 channels, same strides); `s32` shifts the pyramid one octave down
//! (`features.6` / `.13` / `.16`: 32 / 96 / 160 channels at strides 8 / 16 / 32), for defects
//! larger than a stride-16 cell sees.
//! Parameter names follow torchvision (`features.N.conv.M...`) so the shipped safetensors
//! file loads by name; see [`MobileNetV2::param_names`].

use burn::prelude::*;

use super::layers::{Act, ConvBn, Style};

/// Where a chain of inverted residual blocks is tapped: the rule the network and its ONNX
/// export share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapPoints {
    /// Block indices (0-based; MobileNetV2's `features.{i+1}`), ascending.
    pub blocks: [usize; 3],
    /// Tap the block's expansion (first 1x1 ConvBn, ReLU6) instead of its output.
    pub expanded: bool,
}

impl TapPoints {
    pub fn contains(&self, i: usize) -> bool {
        self.blocks.contains(&i)
    }

    pub fn last(&self) -> usize {
        self.blocks[2]
    }
}

/// One tap set of the network: its stages (torchvision's table, truncated after the block
/// that holds the last tap) and where the taps are.
#[derive(Debug)]
pub struct Variant {
    /// (expansion t, output channels c, repeats n, first stride s).
    pub stages: &'static [(usize, usize, usize, usize)],
    pub taps: TapPoints,
    pub tap_channels: [usize; 3],
    pub tap_strides: [usize; 3],
}

const BASE: [(usize, usize, usize, usize); 5] =
    [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1)];

/// The default: linear bottlenecks at strides 4 / 8 / 16.
pub const STANDARD: Variant = Variant {
    stages: &BASE,
    taps: TapPoints { blocks: [2, 5, 12], expanded: false },
    tap_channels: [24, 32, 96],
    tap_strides: [4, 8, 16],
};

/// The expansions of the blocks after the default taps (the last one opens the 160 stage).
pub const EXPANDED: Variant = Variant {
    stages: &[BASE[0], BASE[1], BASE[2], BASE[3], BASE[4], (6, 160, 1, 2)],
    taps: TapPoints { blocks: [3, 6, 13], expanded: true },
    tap_channels: [144, 192, 576],
    tap_strides: [4, 8, 16],
};

/// Bottlenecks at strides 8 / 16 / 32.
pub const S32: Variant = Variant {
    stages: &[BASE[0], BASE[1], BASE[2], BASE[3], BASE[4], (6, 160, 3, 2)],
    taps: TapPoints { blocks: [5, 12, 15], expanded: false },
    tap_channels: [32, 96, 160],
    tap_strides: [8, 16, 32],
};

/// One inverted residual block: (expand 1x1) -> depthwise 3x3 -> project 1x1 (linear).
#[derive(Module, Debug)]
pub struct InvertedResidual {
    pub layers: Vec<ConvBn>,
    #[module(skip)]
    pub residual: bool,
}

impl InvertedResidual {
    /// Expansion `t`, depthwise kernel `k` (MobileNetV2: always 3; EfficientNet: 3 or 5).
    #[allow(clippy::too_many_arguments)]
    pub fn new(cin: usize, cout: usize, stride: usize, t: usize, k: usize, style: Style, device: &Device) -> Self {
        let hidden = cin * t;
        let mut layers = Vec::new();
        if t != 1 {
            layers.push(ConvBn::styled(cin, hidden, 1, 1, 1, Act::Relu6, style, device));
        }
        layers.push(ConvBn::styled(hidden, hidden, k, stride, hidden, Act::Relu6, style, device));
        layers.push(ConvBn::styled(hidden, cout, 1, 1, 1, Act::None, style, device));
        Self { layers, residual: stride == 1 && cin == cout }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = self.layers.iter().fold(x.clone(), |y, l| l.forward(y));
        if self.residual { y + x } else { y }
    }
}

#[derive(Module, Debug)]
pub struct MobileNetV2 {
    pub stem: ConvBn,
    /// `blocks[i]` is torchvision's `features.{i+1}`.
    pub blocks: Vec<InvertedResidual>,
    #[module(skip)]
    pub taps: TapPoints,
}

impl MobileNetV2 {
    /// Random init (Se, or the teacher before its weights are loaded).
    pub fn new(variant: &Variant, device: &Device) -> Self {
        let stem = ConvBn::new(3, 32, 3, 2, 1, Act::Relu6, device);
        let mut blocks = Vec::new();
        let mut cin = 32;
        for &(t, c, n, s) in variant.stages {
            for i in 0..n {
                blocks.push(InvertedResidual::new(cin, c, if i == 0 { s } else { 1 }, t, 3, Style::TORCH, device));
                cin = c;
            }
        }
        Self { stem, blocks, taps: variant.taps }
    }

    /// The three tap outputs.
    pub fn forward(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        forward_taps(&self.stem, &self.blocks, x, &self.taps)
    }

    /// torchvision (conv, bn) name prefixes of every ConvBn, in [`layers_mut`](Self::layers_mut) order.
    pub fn param_names(&self) -> Vec<(String, String)> {
        let mut out = vec![("features.0.0".to_string(), "features.0.1".to_string())];
        for (i, block) in self.blocks.iter().enumerate() {
            let f = format!("features.{}.conv", i + 1);
            let n = block.layers.len();
            for j in 0..n {
                // The last (project) layer is a bare conv + BN at `conv.{j}` / `conv.{j+1}`;
                // the others are ConvBNReLU sequences at `conv.{j}.0` / `conv.{j}.1`.
                out.push(if j + 1 == n {
                    (format!("{f}.{j}"), format!("{f}.{}", j + 1))
                } else {
                    (format!("{f}.{j}.0"), format!("{f}.{j}.1"))
                });
            }
        }
        out
    }

    /// Every ConvBn in forward order, for loading weights.
    pub fn layers_mut(&mut self) -> Vec<&mut ConvBn> {
        layers_in_order(&mut self.stem, &mut self.blocks)
    }
}

/// Stem, then the blocks up to the last tap; returns the tapped tensors. MobileNetV2 and
/// EfficientNet-Lite alike.
pub fn forward_taps(stem: &ConvBn, blocks: &[InvertedResidual], x: Tensor<4>, taps: &TapPoints) -> Vec<Tensor<4>> {
    let mut x = stem.forward(x);
    let mut out = Vec::with_capacity(3);
    for (i, block) in blocks.iter().enumerate().take(taps.last() + 1) {
        if !taps.contains(i) {
            x = block.forward(x);
        } else if taps.expanded {
            out.push(block.layers[0].forward(x.clone()));
            if i < taps.last() {
                x = block.forward(x);
            }
        } else {
            x = block.forward(x);
            out.push(x.clone());
        }
    }
    out
}

/// Every ConvBn of a stem and its blocks in forward order, for loading weights.
pub fn layers_in_order<'a>(stem: &'a mut ConvBn, blocks: &'a mut [InvertedResidual]) -> Vec<&'a mut ConvBn> {
    let mut out = vec![stem];
    for block in blocks {
        out.extend(block.layers.iter_mut());
    }
    out
}
