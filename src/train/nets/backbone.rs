//! The teacher's architecture, chosen at run time; Se uses the same one with random weights,
//! or (`--student-e dense`) the dense-convolution encoder of `dense.rs`.

use burn::prelude::*;

use super::dense::DenseEncoder;
use super::layers::ConvBn;
use super::mobilenet_v2::{self, MobileNetV2};
use super::resnet::{self, ResNet};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    MobileNetV2,
    ResNet18,
    ResNet34,
}

impl Arch {
    pub const NAMES: [&'static str; 3] = ["mobilenet_v2", "resnet18", "resnet34"];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "mobilenet_v2" => Some(Arch::MobileNetV2),
            "resnet18" => Some(Arch::ResNet18),
            "resnet34" => Some(Arch::ResNet34),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::MobileNetV2 => "mobilenet_v2",
            Arch::ResNet18 => "resnet18",
            Arch::ResNet34 => "resnet34",
        }
    }

    pub fn tap_channels(self) -> [usize; 3] {
        match self {
            Arch::MobileNetV2 => mobilenet_v2::TAP_CHANNELS,
            Arch::ResNet18 | Arch::ResNet34 => resnet::TAP_CHANNELS,
        }
    }

    /// Every teacher taps at strides 4, 8 and 16.
    pub fn tap_strides(self) -> [usize; 3] {
        [4, 8, 16]
    }

    /// Module names of the taps, for the manifest.
    pub fn tap_names(self) -> Vec<String> {
        match self {
            Arch::MobileNetV2 => mobilenet_v2::TAPS.iter().map(|i| format!("features.{i}")).collect(),
            Arch::ResNet18 | Arch::ResNet34 => (1..=3).map(|i| format!("layer{i}")).collect(),
        }
    }
}

/// One of the supported backbones (exactly one field is set).
#[derive(Module, Debug)]
pub struct Backbone {
    pub mobilenet_v2: Option<MobileNetV2>,
    pub resnet: Option<ResNet>,
    /// Only ever a student (no pretrained weights exist for it).
    pub dense: Option<DenseEncoder>,
}

impl Backbone {
    pub fn new(arch: Arch, device: &Device) -> Self {
        let (mobilenet_v2, resnet) = match arch {
            Arch::MobileNetV2 => (Some(MobileNetV2::new(device)), None),
            Arch::ResNet18 => (None, Some(ResNet::new([2, 2, 2], device))),
            Arch::ResNet34 => (None, Some(ResNet::new([3, 4, 6], device))),
        };
        Self { mobilenet_v2, resnet, dense: None }
    }

    /// The dense-convolution encoder with taps as wide as `arch`'s (a student only).
    pub fn dense(arch: Arch, device: &Device) -> Self {
        Self { mobilenet_v2: None, resnet: None, dense: Some(DenseEncoder::new(arch.tap_channels(), device)) }
    }

    /// The three tap outputs.
    pub fn forward(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        match (&self.mobilenet_v2, &self.resnet, &self.dense) {
            (Some(m), _, _) => m.forward(x),
            (None, Some(r), _) => r.forward(x),
            (None, None, Some(d)) => d.forward(x),
            (None, None, None) => unreachable!("a backbone has one architecture"),
        }
    }

    /// Every ConvBn with its torchvision (conv, bn) name prefixes, for loading weights.
    pub fn named_layers_mut(&mut self) -> Vec<(&mut ConvBn, String, String)> {
        let (names, layers) = match (&mut self.mobilenet_v2, &mut self.resnet) {
            (Some(m), _) => (m.param_names(), m.layers_mut()),
            (None, Some(r)) => (r.param_names(), r.layers_mut()),
            // Pretrained weights exist only for the teachers' architectures.
            (None, None) => unreachable!("only a teacher architecture loads weights"),
        };
        layers.into_iter().zip(names).map(|(l, (c, b))| (l, c, b)).collect()
    }
}
