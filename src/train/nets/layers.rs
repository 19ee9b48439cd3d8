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

/// How a layer pads and normalises: the convention its pretrained weights were trained with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Style {
    /// TensorFlow's "same" padding: a stride-2 conv on an even size pads `(k-2)/2` before and
    /// the rest after (PyTorch pads `k/2` on both sides). TF-trained weights (EfficientNet)
    /// see the wrong pixels without it.
    pub tf_same: bool,
    pub bn_epsilon: f64,
}

impl Style {
    /// PyTorch's convention (torchvision's models, our students).
    pub const TORCH: Style = Style { tf_same: false, bn_epsilon: 1e-5 };
    /// TensorFlow's (EfficientNet-Lite, ported with its padding and BatchNorm epsilon).
    pub const TF: Style = Style { tf_same: true, bn_epsilon: 1e-3 };

    /// (top, left, bottom, right) padding of a `k x k` conv with this stride. The TF form
    /// assumes even sizes at stride 2, which inputs that are multiples of 32 guarantee.
    pub fn pads(self, k: usize, stride: usize) -> [usize; 4] {
        if self.tf_same && stride == 2 {
            let (before, after) = ((k - 2) / 2, (k - 2) - (k - 2) / 2);
            [before, before, after, after]
        } else {
            [k / 2; 4]
        }
    }
}

/// Conv (no bias) -> BatchNorm -> activation; padding `k/2` (or TF's, see [`Style`]).
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
        Self::styled(cin, cout, k, stride, groups, act, Style::TORCH, device)
    }

    /// [`ConvBn::new`] with the padding and BatchNorm epsilon of `style`.
    #[allow(clippy::too_many_arguments)]
    pub fn styled(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        groups: usize,
        act: Act,
        style: Style,
        device: &Device,
    ) -> Self {
        let [top, left, bottom, right] = style.pads(k, stride);
        let conv = Conv2dConfig::new([cin, cout], [k, k])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(top, left, bottom, right))
            .with_groups(groups)
            .with_bias(false)
            .init(device);
        Self { conv, bn: BatchNormConfig::new(cout).with_epsilon(style.bn_epsilon).init(device), act }
    }

    /// (top, left, bottom, right) padding, for the ONNX exporter.
    pub fn pads(&self) -> [usize; 4] {
        match self.conv.padding {
            PaddingConfig2d::Explicit(t, l, b, r) => [t, l, b, r],
            ref other => unreachable!("ConvBn always pads explicitly, not {other:?}"),
        }
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
