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

/// Whether depthwise convs run as nine shifted multiply-adds instead of a grouped conv.
///
/// Why: burn's CPU backend computes a grouped conv's weight gradient as one conv per group
/// (hundreds per MobileNetV2 layer), which dominated CPU training. As shifted slices the same
/// function needs only elementwise ops and sums, whose gradients are cheap everywhere. The
/// weights, and so the exported ONNX, are unchanged. Process-wide, set once by the trainer
/// for the CPU device (GPU backends have real depthwise kernels).
static DEPTHWISE_AS_SHIFTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Chooses the depthwise conv form (see [`DEPTHWISE_AS_SHIFTS`]).
pub fn set_depthwise_as_shifts(on: bool) {
    DEPTHWISE_AS_SHIFTS.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// A depthwise `k x k` conv (`weight [C, 1, k, k]`, stride `s`, padding `k/2`, no bias) as a
/// sum of `k²` strided shifts of the zero-padded input scaled per channel.
pub fn depthwise_as_shifts(x: Tensor<4>, weight: Tensor<4>, stride: usize) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    let [_, _, k, _] = weight.dims();
    let p = k / 2;
    let (ho, wo) = ((h + 2 * p - k) / stride + 1, (w + 2 * p - k) / stride + 1);
    let padded = x.pad([(p, p), (p, p)], burn::tensor::ops::PadMode::Constant(0.0));
    let mut out: Option<Tensor<4>> = None;
    for ky in 0..k {
        for kx in 0..k {
            let (y1, x1) = (ky + (ho - 1) * stride + 1, kx + (wo - 1) * stride + 1);
            let shifted =
                padded.clone().slice(burn::tensor::s![.., .., ky..y1;stride as isize, kx..x1;stride as isize]);
            let wk = weight.clone().slice(burn::tensor::s![.., .., ky..ky + 1, kx..kx + 1]).reshape([1, c, 1, 1]);
            let term = shifted * wk;
            out = Some(match out {
                Some(acc) => acc + term,
                None => term,
            });
        }
    }
    let out = out.expect("k >= 1");
    debug_assert_eq!(out.dims(), [b, c, ho, wo]);
    out
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
        let [cout, cin_per_group, k, _] = self.conv.weight.val().dims();
        let depthwise = self.conv.groups > 1 && self.conv.groups == cout && cin_per_group == 1 && k > 1;
        let y = if depthwise && DEPTHWISE_AS_SHIFTS.load(std::sync::atomic::Ordering::Relaxed) {
            depthwise_as_shifts(x, self.conv.weight.val(), self.conv.stride[0])
        } else {
            self.conv.forward(x)
        };
        self.act.apply(self.bn.forward(y))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depthwise_as_shifts_equals_the_grouped_conv_forward_and_backward() {
        let device = Device::flex().autodiff();
        for stride in [1, 2] {
            let conv = ConvBn::new(6, 6, 3, stride, 6, Act::None, &device);
            let x =
                Tensor::<4>::random([2, 6, 9, 8], burn::tensor::Distribution::Normal(0.0, 1.0), &device).require_grad();
            let w = conv.conv.weight.val();
            let a = conv.conv.forward(x.clone());
            let b = depthwise_as_shifts(x.clone(), w.clone(), stride);
            assert_eq!(a.dims(), b.dims(), "stride {stride}");
            let diff = (a.clone() - b.clone()).abs().max().into_scalar::<f32>();
            assert!(diff < 1e-5, "stride {stride}: forward differs by {diff}");
            let ga = a.sum().backward();
            let gb = b.sum().backward();
            let (xa, xb) = (x.grad(&ga).unwrap(), x.grad(&gb).unwrap());
            let dx = (xa - xb).abs().max().into_scalar::<f32>();
            let (wa, wb) = (w.grad(&ga).unwrap(), w.grad(&gb).unwrap());
            let dw = (wa - wb).abs().max().into_scalar::<f32>();
            assert!(dx < 1e-4 && dw < 1e-4, "stride {stride}: gradients differ (x {dx}, w {dw})");
        }
    }
}
