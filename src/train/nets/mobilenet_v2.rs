//! MobileNetV2 (torchvision layout) up to the third pyramid tap: the teacher (pretrained,
//! frozen) and the encoder-like student Se (same architecture, random init).
//!
//! Shapes at input `[B, 3, H, W]`: taps are the outputs of `features.3` `[B, 24, H/4, W/4]`,
//! `features.6` `[B, 32, H/8, W/8]` and `features.13` `[B, 96, H/16, W/16]`.
//! Parameter names follow torchvision (`features.N.conv.M...`) so the shipped safetensors
//! file loads by name; see [`MobileNetV2::param_names`].

use burn::prelude::*;

use super::layers::{Act, ConvBn, Style};

/// (expansion t, output channels c, repeats n, first stride s): torchvision's table,
/// truncated after the 96-channel stage that holds the last tap.
const STAGES: [(usize, usize, usize, usize); 5] =
    [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1)];
/// `features.N` indices whose outputs are the pyramid taps.
pub const TAPS: [usize; 3] = [3, 6, 13];
pub const TAP_CHANNELS: [usize; 3] = [24, 32, 96];
/// Whether block `i` (0-based; torchvision's `features.{i+1}`) ends at a pyramid tap: the
/// rule the network and its ONNX export share.
pub fn is_tap(i: usize) -> bool {
    TAPS.contains(&(i + 1))
}

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
}

impl MobileNetV2 {
    /// Random init (Se, or the teacher before its weights are loaded).
    pub fn new(device: &Device) -> Self {
        let stem = ConvBn::new(3, 32, 3, 2, 1, Act::Relu6, device);
        let mut blocks = Vec::new();
        let mut cin = 32;
        for (t, c, n, s) in STAGES {
            for i in 0..n {
                blocks.push(InvertedResidual::new(cin, c, if i == 0 { s } else { 1 }, t, 3, Style::TORCH, device));
                cin = c;
            }
        }
        Self { stem, blocks }
    }

    /// The three tap outputs.
    pub fn forward(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        forward_taps(&self.stem, &self.blocks, x, is_tap)
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

/// Stem, then the blocks; returns the outputs of the blocks whose (0-based) index `is_tap`
/// accepts. MobileNetV2 and EfficientNet-Lite alike.
pub fn forward_taps(
    stem: &ConvBn,
    blocks: &[InvertedResidual],
    x: Tensor<4>,
    is_tap: impl Fn(usize) -> bool,
) -> Vec<Tensor<4>> {
    let mut x = stem.forward(x);
    let mut taps = Vec::with_capacity(3);
    for (i, block) in blocks.iter().enumerate() {
        x = block.forward(x);
        if is_tap(i) {
            taps.push(x.clone());
        }
    }
    taps
}

/// Every ConvBn of a stem and its blocks in forward order, for loading weights.
pub fn layers_in_order<'a>(stem: &'a mut ConvBn, blocks: &'a mut [InvertedResidual]) -> Vec<&'a mut ConvBn> {
    let mut out = vec![stem];
    for block in blocks {
        out.extend(block.layers.iter_mut());
    }
    out
}
