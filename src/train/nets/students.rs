//! The two students: Se (encoder-like, sees the image) and Sd (decoder-like, rebuilds the
//! teacher's pyramid from the deep-feature (DF) embedding of Se's features).
//!
//! Shapes for the MobileNetV2 teacher at `[B, 3, H, W]` (levels `c = [24, 32, 96]` at
//! strides 4/8/16):
//! 1. Se: `[B,3,H,W] -> e1 [B,24,H/4,W/4], e2 [B,32,H/8,W/8], e3 [B,96,H/16,W/16]`;
//! 2. DF: each `e_i` goes to stride 16 with 3x3 stride-2 ConvBn steps (to `c3` channels),
//!    concat `[B, 3*c3, H/16, W/16]`, a stride-2 residual block and a plain one give the
//!    bottleneck `[B, bottleneck, H/32, W/32]` (RD4AD's OCBE shape);
//! 3. Sd: per level, from deep to shallow: ConvTranspose k2 s2 -> BN -> ReLU -> 3x3 ConvBn
//!    (ReLU) gives the hidden state, a 1x1 conv head gives `d_i` with the teacher's width.
//!    Upsampling is a transposed conv because burn's CUDA backend has no bilinear backward.

use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;

use super::backbone::{Arch, Backbone};
use super::layers::{Act, ConvBn, ResBlock};

/// Bottleneck channels of the DF embedding for a teacher whose deepest tap has `c3` channels.
pub fn bottleneck_channels(c3: usize) -> usize {
    2 * c3
}

/// Hidden width of Sd's block for a level of `c` teacher channels.
pub fn hidden_channels(c: usize) -> usize {
    (2 * c).max(48)
}

#[derive(Module, Debug)]
pub struct DfEmbedding {
    /// Per level, the stride-2 steps that bring it to stride 16.
    pub down: Vec<Vec<ConvBn>>,
    pub fuse: Vec<ResBlock>,
}

impl DfEmbedding {
    pub fn new(channels: &[usize], strides: &[usize], device: &Device) -> Self {
        let (c3, s3) = (*channels.last().expect("3 levels"), *strides.last().expect("3 levels"));
        let down = channels
            .iter()
            .zip(strides)
            .map(|(&c, &s)| {
                let steps = (s3 / s).trailing_zeros() as usize;
                (0..steps).map(|k| ConvBn::new(if k == 0 { c } else { c3 }, c3, 3, 2, 1, Act::Relu, device)).collect()
            })
            .collect();
        let b = bottleneck_channels(c3);
        let fuse = vec![ResBlock::new(3 * c3, b, 2, device), ResBlock::new(b, b, 1, device)];
        Self { down, fuse }
    }

    pub fn forward(&self, levels: &[Tensor<4>]) -> Tensor<4> {
        let aligned =
            levels.iter().zip(&self.down).map(|(x, steps)| steps.iter().fold(x.clone(), |x, s| s.forward(x))).collect();
        self.fuse.iter().fold(Tensor::cat(aligned, 1), |x, b| b.forward(x))
    }
}

/// One decoder level: upsample x2, refine, and a linear head to the teacher's width.
#[derive(Module, Debug)]
pub struct UpBlock {
    pub up: ConvTranspose2d,
    pub up_bn: BatchNorm,
    pub refine: ConvBn,
    pub head: Conv2d,
}

impl UpBlock {
    fn new(cin: usize, hidden: usize, cout: usize, device: &Device) -> Self {
        Self {
            up: ConvTranspose2dConfig::new([cin, hidden], [2, 2]).with_stride([2, 2]).with_bias(false).init(device),
            up_bn: BatchNormConfig::new(hidden).init(device),
            refine: ConvBn::new(hidden, hidden, 3, 1, 1, Act::Relu, device),
            head: Conv2dConfig::new([hidden, cout], [1, 1]).init(device),
        }
    }

    /// Returns (hidden state for the next level, this level's output).
    fn forward(&self, x: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let h = self.refine.forward(relu(self.up_bn.forward(self.up.forward(x))));
        let out = self.head.forward(h.clone());
        (h, out)
    }
}

#[derive(Module, Debug)]
pub struct Decoder {
    /// Deepest level first.
    pub blocks: Vec<UpBlock>,
}

impl Decoder {
    pub fn new(channels: &[usize], device: &Device) -> Self {
        let mut cin = bottleneck_channels(*channels.last().expect("3 levels"));
        let blocks = channels
            .iter()
            .rev()
            .map(|&c| {
                let hidden = hidden_channels(c);
                let b = UpBlock::new(cin, hidden, c, device);
                cin = hidden;
                b
            })
            .collect();
        Self { blocks }
    }

    /// Outputs in the teacher's order (shallow first).
    pub fn forward(&self, bottleneck: Tensor<4>) -> Vec<Tensor<4>> {
        let mut x = bottleneck;
        let mut outs = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            let (h, out) = b.forward(x);
            outs.push(out);
            x = h;
        }
        outs.reverse();
        outs
    }
}

/// Se's architecture.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StudentE {
    /// The teacher's own architecture, randomly initialised (the method as published).
    #[default]
    Teacher,
    /// Dense 3x3 convolutions of about the same multiply-adds (`dense.rs`): faster in tract.
    Dense,
}

impl StudentE {
    /// The default Se for a teacher: dense convolutions beside a depthwise teacher (as good or
    /// better on Magnetic Tile and 2x faster in tract, docs/RESULTS.md §0c), the teacher's
    /// own architecture beside a dense one (the ResNets).
    pub fn auto(arch: Arch) -> Self {
        match arch {
            Arch::ResNet18 | Arch::ResNet34 => StudentE::Teacher,
            _ => StudentE::Dense,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            StudentE::Teacher => "teacher",
            StudentE::Dense => "dense",
        }
    }
}

/// Se, and for DSKD the DF embedding and Sd.
#[derive(Module, Debug)]
pub struct Students {
    pub se: Backbone,
    pub df: Option<DfEmbedding>,
    pub sd: Option<Decoder>,
}

/// Features of both students for one batch (`d` is empty for the S-T baseline).
pub struct StudentFeatures {
    pub e: Vec<Tensor<4>>,
    pub d: Vec<Tensor<4>>,
}

impl Students {
    /// Students for a teacher of `arch`, with Se of the given architecture.
    pub fn new(arch: Arch, se: StudentE, dual: bool, device: &Device) -> Self {
        let (channels, strides) = (arch.tap_channels(), arch.tap_strides());
        Self {
            se: match se {
                StudentE::Teacher => Backbone::new(arch, device),
                StudentE::Dense => Backbone::dense(arch, device),
            },
            df: dual.then(|| DfEmbedding::new(&channels, &strides, device)),
            sd: dual.then(|| Decoder::new(&channels, device)),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> StudentFeatures {
        let e = self.se.forward(x);
        let d = match (&self.df, &self.sd) {
            (Some(df), Some(sd)) => sd.forward(df.forward(&e)),
            _ => Vec::new(),
        };
        StudentFeatures { e, d }
    }
}
