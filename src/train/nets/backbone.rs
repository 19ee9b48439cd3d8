//! The teacher's architecture, chosen at run time; Se uses the same one with random weights,
//! or (`--student-e dense`) the dense-convolution encoder of `dense.rs`.

use burn::prelude::*;

use super::dense::DenseEncoder;
use super::efficientnet_lite::{self, EfficientNetLite};
use super::layers::ConvBn;
use super::mobilenet_v2::{self, MobileNetV2};
use super::resnet::{self, ResNet};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    MobileNetV2,
    /// MobileNetV2 tapped at its expansions (see [`mobilenet_v2::EXPANDED`]).
    MobileNetV2Expanded,
    /// MobileNetV2 tapped at strides 8 / 16 / 32 (see [`mobilenet_v2::S32`]).
    MobileNetV2S32,
    EfficientNetLite0,
    /// EfficientNet-Lite0 tapped at strides 8 / 16 / 32 (see [`efficientnet_lite::LITE0_S32`]).
    EfficientNetLite0S32,
    EfficientNetLite2,
    ResNet18,
    ResNet34,
}

impl Arch {
    pub const NAMES: [&'static str; 8] = [
        "mobilenet_v2",
        "mobilenet_v2_expanded",
        "mobilenet_v2_s32",
        "efficientnet_lite0",
        "efficientnet_lite0_s32",
        "efficientnet_lite2",
        "resnet18",
        "resnet34",
    ];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "mobilenet_v2" => Some(Arch::MobileNetV2),
            "mobilenet_v2_expanded" => Some(Arch::MobileNetV2Expanded),
            "mobilenet_v2_s32" => Some(Arch::MobileNetV2S32),
            "efficientnet_lite0" => Some(Arch::EfficientNetLite0),
            "efficientnet_lite0_s32" => Some(Arch::EfficientNetLite0S32),
            "efficientnet_lite2" => Some(Arch::EfficientNetLite2),
            "resnet18" => Some(Arch::ResNet18),
            "resnet34" => Some(Arch::ResNet34),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::MobileNetV2 => "mobilenet_v2",
            Arch::MobileNetV2Expanded => "mobilenet_v2_expanded",
            Arch::MobileNetV2S32 => "mobilenet_v2_s32",
            Arch::EfficientNetLite0 => "efficientnet_lite0",
            Arch::EfficientNetLite0S32 => "efficientnet_lite0_s32",
            Arch::EfficientNetLite2 => "efficientnet_lite2",
            Arch::ResNet18 => "resnet18",
            Arch::ResNet34 => "resnet34",
        }
    }

    pub fn tap_channels(self) -> [usize; 3] {
        match self {
            Arch::MobileNetV2 | Arch::MobileNetV2Expanded | Arch::MobileNetV2S32 => {
                self.mobilenet_v2_variant().tap_channels
            }
            Arch::EfficientNetLite0 | Arch::EfficientNetLite0S32 | Arch::EfficientNetLite2 => {
                self.lite_variant().tap_channels
            }
            Arch::ResNet18 | Arch::ResNet34 => resnet::TAP_CHANNELS,
        }
    }

    /// Strides 4, 8 and 16 for every teacher but the `_s32` ones (8, 16, 32).
    pub fn tap_strides(self) -> [usize; 3] {
        match self {
            Arch::MobileNetV2 | Arch::MobileNetV2Expanded | Arch::MobileNetV2S32 => {
                self.mobilenet_v2_variant().tap_strides
            }
            Arch::EfficientNetLite0 | Arch::EfficientNetLite0S32 | Arch::EfficientNetLite2 => {
                self.lite_variant().tap_strides
            }
            _ => [4, 8, 16],
        }
    }

    /// Per-channel (mean, std) of RGB in [0, 1] the pretrained weights expect (fixed
    /// normalisation): ImageNet's statistics for torchvision's models, TF's `(x - 0.5) / 0.5`
    /// for EfficientNet-Lite.
    pub fn input_stats(self) -> ([f32; 3], [f32; 3]) {
        match self {
            Arch::EfficientNetLite0 | Arch::EfficientNetLite0S32 | Arch::EfficientNetLite2 => {
                (efficientnet_lite::MEAN, efficientnet_lite::STD)
            }
            _ => (crate::preprocess::IMAGENET_MEAN, crate::preprocess::IMAGENET_STD),
        }
    }

    /// Module names of the taps, for the manifest.
    pub fn tap_names(self) -> Vec<String> {
        match self {
            Arch::MobileNetV2 | Arch::MobileNetV2Expanded | Arch::MobileNetV2S32 => {
                let taps = self.mobilenet_v2_variant().taps;
                // torchvision's names: `features.{i+1}`, its expansion `features.{i+1}.conv.0`.
                let suffix = if taps.expanded { ".conv.0" } else { "" };
                taps.blocks.iter().map(|i| format!("features.{}{suffix}", i + 1)).collect()
            }
            Arch::EfficientNetLite0 | Arch::EfficientNetLite0S32 | Arch::EfficientNetLite2 => {
                self.lite_variant().taps.iter().map(|i| format!("_blocks.{i}")).collect()
            }
            Arch::ResNet18 | Arch::ResNet34 => (1..=3).map(|i| format!("layer{i}")).collect(),
        }
    }
}

impl Arch {
    /// The MobileNetV2 tap set (only called for those).
    fn mobilenet_v2_variant(self) -> &'static mobilenet_v2::Variant {
        match self {
            Arch::MobileNetV2Expanded => &mobilenet_v2::EXPANDED,
            Arch::MobileNetV2S32 => &mobilenet_v2::S32,
            _ => &mobilenet_v2::STANDARD,
        }
    }

    /// The EfficientNet-Lite member (only called for those).
    fn lite_variant(self) -> &'static efficientnet_lite::Variant {
        match self {
            Arch::EfficientNetLite2 => &efficientnet_lite::LITE2,
            Arch::EfficientNetLite0S32 => &efficientnet_lite::LITE0_S32,
            _ => &efficientnet_lite::LITE0,
        }
    }
}

/// One of the supported backbones (exactly one field is set).
#[derive(Module, Debug)]
pub struct Backbone {
    pub mobilenet_v2: Option<MobileNetV2>,
    pub efficientnet_lite: Option<EfficientNetLite>,
    pub resnet: Option<ResNet>,
    /// Only ever a student (no pretrained weights exist for it).
    pub dense: Option<DenseEncoder>,
}

impl Backbone {
    pub fn new(arch: Arch, device: &Device) -> Self {
        let mut b = Self { mobilenet_v2: None, efficientnet_lite: None, resnet: None, dense: None };
        match arch {
            Arch::MobileNetV2 | Arch::MobileNetV2Expanded | Arch::MobileNetV2S32 => {
                b.mobilenet_v2 = Some(MobileNetV2::new(arch.mobilenet_v2_variant(), device))
            }
            Arch::EfficientNetLite0 | Arch::EfficientNetLite0S32 | Arch::EfficientNetLite2 => {
                b.efficientnet_lite = Some(EfficientNetLite::new(arch.lite_variant(), device))
            }
            Arch::ResNet18 => b.resnet = Some(ResNet::new([2, 2, 2], device)),
            Arch::ResNet34 => b.resnet = Some(ResNet::new([3, 4, 6], device)),
        }
        b
    }

    /// The dense-convolution encoder with taps as wide as `arch`'s (a student only).
    pub fn dense(arch: Arch, device: &Device) -> Self {
        let dense = Some(DenseEncoder::new(arch.tap_channels(), arch.tap_strides(), device));
        Self { mobilenet_v2: None, efficientnet_lite: None, resnet: None, dense }
    }

    /// The three tap outputs.
    pub fn forward(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        if let Some(m) = &self.mobilenet_v2 {
            m.forward(x)
        } else if let Some(e) = &self.efficientnet_lite {
            e.forward(x)
        } else if let Some(r) = &self.resnet {
            r.forward(x)
        } else if let Some(d) = &self.dense {
            d.forward(x)
        } else {
            unreachable!("a backbone has one architecture")
        }
    }

    /// Every ConvBn with its torchvision (conv, bn) name prefixes, for loading weights.
    pub fn named_layers_mut(&mut self) -> Vec<(&mut ConvBn, String, String)> {
        let (names, layers) = if let Some(m) = &mut self.mobilenet_v2 {
            (m.param_names(), m.layers_mut())
        } else if let Some(e) = &mut self.efficientnet_lite {
            (e.param_names(), e.layers_mut())
        } else if let Some(r) = &mut self.resnet {
            (r.param_names(), r.layers_mut())
        } else {
            // Pretrained weights exist only for the teachers' architectures.
            unreachable!("only a teacher architecture loads weights")
        };
        layers.into_iter().zip(names).map(|(l, (c, b))| (l, c, b)).collect()
    }
}
