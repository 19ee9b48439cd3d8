//! Building blocks shared by the teacher, the students and the DF embedding.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;

/// The activation after a conv + BN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    None,
    Relu,
    Relu6,
}

impl Act {
    pub fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Act::None => x,
            Act::Relu => relu(x),
            Act::Relu6 => x.clamp(0.0, 6.0),
        }
    }
}

/// Conv (no bias) -> BatchNorm -> activation; padding `k/2`.
#[derive(Module, Debug)]
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm,
    #[module(skip)]
    pub act: Act,
}

impl ConvBn {
    /// A `k x k` conv from `cin` to `cout` channels with the given stride and groups.
    pub fn new(cin: usize, cout: usize, k: usize, stride: usize, groups: usize, act: Act, device: &Device) -> Self {
        let p = k / 2;
        let conv = Conv2dConfig::new([cin, cout], [k, k])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
            .with_groups(groups)
            .with_bias(false)
            .init(device);
        Self { conv, bn: BatchNormConfig::new(cout).with_epsilon(1e-5).init(device), act }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.act.apply(self.bn.forward(self.conv.forward(x)))
    }
}

/// A basic residual block (two 3x3 ConvBn) with a 1x1 projection shortcut when the shape
/// changes, as in ResNet / RD4AD's OCBE.
#[derive(Module, Debug)]
pub struct ResBlock {
    pub a: ConvBn,
    pub b: ConvBn,
    pub shortcut: Option<ConvBn>,
}

impl ResBlock {
    pub fn new(cin: usize, cout: usize, stride: usize, device: &Device) -> Self {
        let shortcut = (cin != cout || stride != 1).then(|| ConvBn::new(cin, cout, 1, stride, 1, Act::None, device));
        Self {
            a: ConvBn::new(cin, cout, 3, stride, 1, Act::Relu, device),
            b: ConvBn::new(cout, cout, 3, 1, 1, Act::None, device),
            shortcut,
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let skip = match &self.shortcut {
            Some(s) => s.forward(x.clone()),
            None => x.clone(),
        };
        relu(self.b.forward(self.a.forward(x)) + skip)
    }
}
