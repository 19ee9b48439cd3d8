//! ResNet18 / ResNet34 (torchvision layout) up to `layer3`: the paper's teacher backbone, and
//! Se when it is the teacher.
//!
//! Shapes at input `[B, 3, H, W]`: stem (7x7/2 conv, 3x3/2 max-pool) `[B, 64, H/4, W/4]`; taps
//! are the outputs of `layer1` `[B, 64, H/4, W/4]`, `layer2` `[B, 128, H/8, W/8]` and `layer3`
//! `[B, 256, H/16, W/16]`. Parameter names follow torchvision (`layerN.i.conv1`, ...).

use burn::nn::PaddingConfig2d;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::prelude::*;

use super::layers::{Act, ConvBn, ResBlock};

pub const TAP_CHANNELS: [usize; 3] = [64, 128, 256];

#[derive(Module, Debug)]
pub struct ResNet {
    pub stem: ConvBn,
    pub pool: MaxPool2d,
    /// `layers[i]` is torchvision's `layer{i+1}`, made of basic blocks.
    pub layers: Vec<Vec<ResBlock>>,
}

impl ResNet {
    /// Random init; `depths` is `[2, 2, 2]` (ResNet18) or `[3, 4, 6]` (ResNet34).
    pub fn new(depths: [usize; 3], device: &Device) -> Self {
        let mut cin = 64;
        let layers = depths
            .iter()
            .zip(TAP_CHANNELS)
            .enumerate()
            .map(|(i, (&n, c))| {
                (0..n)
                    .map(|j| {
                        let stride = if i > 0 && j == 0 { 2 } else { 1 };
                        let b = ResBlock::new(cin, c, stride, device);
                        cin = c;
                        b
                    })
                    .collect()
            })
            .collect();
        Self {
            stem: ConvBn::new(3, 64, 7, 2, 1, Act::Relu, device),
            pool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            layers,
        }
    }

    /// The three tap outputs.
    pub fn forward(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        let mut x = self.pool.forward(self.stem.forward(x));
        let mut taps = Vec::with_capacity(3);
        for layer in &self.layers {
            x = layer.iter().fold(x, |x, b| b.forward(x));
            taps.push(x.clone());
        }
        taps
    }

    /// torchvision (conv, bn) name prefixes of every ConvBn, in [`layers_mut`](Self::layers_mut) order.
    pub fn param_names(&self) -> Vec<(String, String)> {
        let mut out = vec![("conv1".to_string(), "bn1".to_string())];
        for (i, layer) in self.layers.iter().enumerate() {
            for (j, block) in layer.iter().enumerate() {
                let p = format!("layer{}.{j}", i + 1);
                out.push((format!("{p}.conv1"), format!("{p}.bn1")));
                out.push((format!("{p}.conv2"), format!("{p}.bn2")));
                if block.shortcut.is_some() {
                    out.push((format!("{p}.downsample.0"), format!("{p}.downsample.1")));
                }
            }
        }
        out
    }

    pub fn layers_mut(&mut self) -> Vec<&mut ConvBn> {
        let mut out = vec![&mut self.stem];
        for layer in &mut self.layers {
            for block in layer {
                out.push(&mut block.a);
                out.push(&mut block.b);
                out.extend(block.shortcut.as_mut());
            }
        }
        out
    }
}
