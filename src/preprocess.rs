//! Image -> tensor: resize, colour and normalisation.
//!
//! This is the ONE definition used by `dskd-train` (to make training batches and golden maps)
//! and by the detector (to serve frames), so training and serving cannot drift.
//!
//! Steps: decode -> RGB8 (gray is replicated to 3 channels) -> bilinear resize to the
//! bundle's input size (aspect ratio is not kept: the camera framing is fixed on a line) ->
//! `(x/255 - mean) / std` per channel -> planar CHW `f32`, shape `[3, height, width]`.

use std::path::{Path, PathBuf};

use image::{DynamicImage, RgbImage, imageops::FilterType};
use serde::{Deserialize, Serialize};

/// How a frame becomes the network input; stored in the bundle manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Network input width in pixels (a multiple of 32).
    pub width: u32,
    /// Network input height in pixels (a multiple of 32).
    pub height: u32,
    /// Per-channel mean of RGB values scaled to [0, 1].
    pub mean: [f32; 3],
    /// Per-channel standard deviation of RGB values scaled to [0, 1].
    pub std: [f32; 3],
}

/// ImageNet statistics, used by the torchvision-trained teachers.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet statistics, used by the torchvision-trained teachers.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl InputSpec {
    /// A square ImageNet-normalised input.
    pub fn imagenet(size: u32) -> Self {
        Self { width: size, height: size, mean: IMAGENET_MEAN, std: IMAGENET_STD }
    }

    /// Checks the sizes the pyramid needs (strides up to 32 must divide them).
    pub fn validate(&self) -> Result<(), PreprocessError> {
        let ok = |v: u32| v >= 32 && v.is_multiple_of(32);
        if !ok(self.width) || !ok(self.height) {
            return Err(PreprocessError::BadSize { width: self.width, height: self.height });
        }
        if self.std.iter().any(|s| *s <= 0.0 || !s.is_finite()) {
            return Err(PreprocessError::BadStd(self.std));
        }
        Ok(())
    }

    /// Number of values in one input tensor.
    pub fn len(&self) -> usize {
        3 * (self.width * self.height) as usize
    }

    /// Always false: an input has 3 channels and at least 32x32 pixels.
    pub fn is_empty(&self) -> bool {
        false
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("cannot read image {path}: {source}")]
    Decode { path: PathBuf, source: image::ImageError },
    #[error("input size {width}x{height} is not usable: both sides must be multiples of 32, at least 32")]
    BadSize { width: u32, height: u32 },
    #[error("input std {0:?} must be positive and finite")]
    BadStd([f32; 3]),
}

/// Decodes an image file, naming the file in the error.
pub fn load_image(path: &Path) -> Result<DynamicImage, PreprocessError> {
    image::ImageReader::open(path)
        .map_err(|e| PreprocessError::Decode { path: path.to_owned(), source: e.into() })?
        .with_guessed_format()
        .map_err(|e| PreprocessError::Decode { path: path.to_owned(), source: e.into() })?
        .decode()
        .map_err(|source| PreprocessError::Decode { path: path.to_owned(), source })
}

/// Resizes to the input size as RGB8 (bilinear); gray images become 3 equal channels.
pub fn resize_rgb(img: &DynamicImage, spec: &InputSpec) -> RgbImage {
    let rgb = img.to_rgb8();
    if rgb.dimensions() == (spec.width, spec.height) {
        return rgb;
    }
    image::imageops::resize(&rgb, spec.width, spec.height, FilterType::Triangle)
}

/// The network input for one image: planar CHW, normalised, `spec.len()` values.
pub fn to_tensor(img: &DynamicImage, spec: &InputSpec) -> Vec<f32> {
    let rgb = resize_rgb(img, spec);
    let plane = (spec.width * spec.height) as usize;
    let mut out = vec![0.0f32; 3 * plane];
    for (i, px) in rgb.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (px[c] as f32 / 255.0 - spec.mean[c]) / spec.std[c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gray_becomes_three_equal_normalised_channels() {
        let spec = InputSpec { width: 32, height: 32, mean: [0.5; 3], std: [0.25; 3] };
        let img = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(64, 64, image::Luma([255])));
        let t = to_tensor(&img, &spec);
        assert_eq!(t.len(), spec.len());
        assert!(t.iter().all(|v| (v - 2.0).abs() < 1e-6), "(1 - 0.5) / 0.25 = 2");
    }

    #[test]
    fn rejects_sizes_the_pyramid_cannot_divide() {
        assert!(InputSpec::imagenet(100).validate().is_err());
        assert!(InputSpec::imagenet(256).validate().is_ok());
    }
}
