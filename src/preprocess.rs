//! Image -> tensor: resize, colour and normalisation.
//!
//! This is the ONE definition used by `dskd-train` (to make training batches and golden maps)
//! and by the detector (to serve frames), so training and serving cannot drift.
//!
//! Steps: decode -> RGB8 (gray is replicated to 3 channels) -> bilinear resize to the
//! bundle's input size (aspect ratio is not kept: the camera framing is fixed on a line) ->
//! normalise per channel -> planar CHW `f32`, shape `[3, height, width]`. Normalising is
//! either `(x/255 - mean) / std` with fixed statistics (ImageNet's, what the teachers were
//! trained on), or per image: each channel of each frame to zero mean and unit variance, so
//! a change of exposure or gain (the same scene brighter or darker) gives the same input.
//! With tiles ([`crate::tiling`]), the frame is resized to the tile grid's canvas instead,
//! normalised as one image, and cut into tile tensors ([`to_tiles`]).

use std::path::{Path, PathBuf};

use image::{DynamicImage, RgbImage, imageops::FilterType};
use serde::{Deserialize, Serialize};

use crate::tiling::{self, Tiles, TilesError};

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
    /// `fixed` (the `mean`/`std` above) or `per_image`; absent in bundles older than the option.
    #[serde(default)]
    pub normalize: Normalize,
    /// The tile grid (`width` x `height` is then one tile); absent: one tile, the whole frame.
    #[serde(default, skip_serializing_if = "Tiles::is_single")]
    pub tiles: Tiles,
}

/// Which statistics normalise a frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalize {
    /// `(x/255 - mean) / std` with the manifest's fixed `mean` and `std`.
    #[default]
    Fixed,
    /// Each channel of each frame to zero mean and unit variance (its own statistics): makes
    /// the input blind to exposure and gain, which vary between shots on some lines.
    PerImage,
}

impl Normalize {
    /// The name used in the manifest and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Normalize::Fixed => "fixed",
            Normalize::PerImage => "per_image",
        }
    }
}

/// Per-image normalisation never divides by less than this (in [0, 1] units, ~2.5 grey
/// levels of 255): a flat or nearly flat frame stays near zero instead of amplifying noise.
pub const MIN_IMAGE_STD: f32 = 0.01;

/// ImageNet statistics, used by the torchvision-trained teachers.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet statistics, used by the torchvision-trained teachers.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl InputSpec {
    /// A square ImageNet-normalised input.
    pub fn imagenet(size: u32) -> Self {
        Self {
            width: size,
            height: size,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            normalize: Normalize::Fixed,
            tiles: Tiles::default(),
        }
    }

    /// The same input with another normalisation.
    pub fn with_normalize(self, normalize: Normalize) -> Self {
        Self { normalize, ..self }
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
        self.tiles.validate(self.width, self.height)?;
        Ok(())
    }

    /// The (width, height) a frame is resized to: the input's, or the tile grid's canvas.
    pub fn canvas(&self) -> (u32, u32) {
        self.tiles.canvas(self.width, self.height)
    }

    /// The untiled input of the canvas's size: what a whole frame is resized and normalised to
    /// before it is cut into tiles.
    pub fn canvas_spec(&self) -> InputSpec {
        let (width, height) = self.canvas();
        InputSpec { width, height, tiles: Tiles::default(), ..self.clone() }
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
    #[error(transparent)]
    Tiles(#[from] TilesError),
}

/// Decodes an image file, naming the file in the error.
pub fn load_image(path: &Path) -> Result<DynamicImage, PreprocessError> {
    let decode_error = |source| PreprocessError::Decode { path: path.to_owned(), source };
    let bytes = std::fs::read(path).map_err(|e| decode_error(e.into()))?;
    decode_image(&bytes).map_err(decode_error)
}

/// The most pixels an encoded image may declare: 64 MP, above the ~50 MP of the largest line
/// cameras. A JPEG of a few hundred bytes can declare 65535 x 65535 pixels, and decoding it
/// would cost seconds of CPU and hundreds of MB (found by fuzzing, docs/RELIABILITY.md).
pub const MAX_DECODED_PIXELS: u64 = 1 << 26;

/// Decodes an encoded image, its format told by its bytes, once the size its header declares
/// is checked against [`MAX_DECODED_PIXELS`] (and within the `image` crate's default limits:
/// no single allocation over 512 MiB).
pub fn decode_image(bytes: &[u8]) -> Result<DynamicImage, image::ImageError> {
    let reader = || image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format();
    let (width, height) = guarded(|| reader()?.into_dimensions())?;
    if over_pixel_limit(width, height) {
        let why = format!("the image declares {width}x{height} pixels, over the {MAX_DECODED_PIXELS}-pixel limit");
        return Err(image::ImageError::Decoding(image::error::DecodingError::new(
            image::error::ImageFormatHint::Unknown,
            why,
        )));
    }
    guarded(|| reader()?.decode())
}

/// Whether a header's `width` x `height` is over [`MAX_DECODED_PIXELS`].
pub fn over_pixel_limit(width: u32, height: u32) -> bool {
    u64::from(width) * u64::from(height) > MAX_DECODED_PIXELS
}

/// Runs a third-party decoder on untrusted bytes, a panic inside it becoming an error that
/// costs this image only: `zune-jpeg` 0.5 (under `image`) multiplies with overflow on some
/// malformed Huffman tables, a panic wherever overflow checks are on (found by fuzzing,
/// docs/RELIABILITY.md).
pub fn guarded<T>(decode: impl FnOnce() -> Result<T, image::ImageError>) -> Result<T, image::ImageError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).unwrap_or_else(|_| {
        Err(image::ImageError::Decoding(image::error::DecodingError::new(
            image::error::ImageFormatHint::Unknown,
            "the decoder failed on malformed data (it panicked)",
        )))
    })
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
    let (mean, std) = match spec.normalize {
        Normalize::Fixed => (spec.mean, spec.std),
        Normalize::PerImage => channel_stats(&rgb),
    };
    let plane = (spec.width * spec.height) as usize;
    let mut out = vec![0.0f32; 3 * plane];
    for (i, px) in rgb.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (px[c] as f32 / 255.0 - mean[c]) / std[c];
        }
    }
    out
}

/// The network inputs for one image: one tensor per tile ([`Tiles::origins`] order), each
/// `spec.len()` values; the whole frame's tensor when the input has one tile.
pub fn to_tiles(img: &DynamicImage, spec: &InputSpec) -> Vec<Vec<f32>> {
    if spec.tiles.is_single() {
        return vec![to_tensor(img, spec)];
    }
    tiling::cut(&to_tensor(img, &spec.canvas_spec()), &spec.tiles, spec.width, spec.height)
}

/// Each channel's own mean and standard deviation in [0, 1] units, the deviation at least
/// `MIN_IMAGE_STD`.
fn channel_stats(rgb: &RgbImage) -> ([f32; 3], [f32; 3]) {
    // Sums of 8-bit values and their squares are exact in integers; f64 keeps the variance's
    // subtraction accurate.
    let (mut sum, mut squares) = ([0u64; 3], [0u64; 3]);
    for px in rgb.pixels() {
        for c in 0..3 {
            let v = px[c] as u64;
            sum[c] += v;
            squares[c] += v * v;
        }
    }
    let n = (rgb.width() as f64 * rgb.height() as f64).max(1.0);
    let (mut mean, mut std) = ([0.0f32; 3], [0.0f32; 3]);
    for c in 0..3 {
        let m = sum[c] as f64 / n;
        let var = (squares[c] as f64 / n - m * m).max(0.0);
        // Divided in f32 as the pixels are, so a flat frame normalises to exactly 0.
        mean[c] = m as f32 / 255.0;
        std[c] = ((var.sqrt() / 255.0) as f32).max(MIN_IMAGE_STD);
    }
    (mean, std)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_declaring_over_the_pixel_limit_is_refused_before_it_is_decoded() {
        // Found by fuzzing: a 665-byte JPEG declaring 1576 x 63233 pixels took 13 s to decode.
        let small = crate::source::pixels::tests::jpeg(&image::RgbImage::from_pixel(16, 8, image::Rgb([9, 9, 9])));
        assert_eq!(decode_image(&small).unwrap().width(), 16);
        let bomb = crate::source::pixels::tests::declaring(&small, 1576, 63233);
        let e = decode_image(&bomb).unwrap_err().to_string();
        assert!(e.contains("1576x63233") && e.contains("limit"), "{e}");
    }

    #[test]
    fn gray_becomes_three_equal_normalised_channels() {
        let spec = InputSpec { mean: [0.5; 3], std: [0.25; 3], ..InputSpec::imagenet(32) };
        let img = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(64, 64, image::Luma([255])));
        let t = to_tensor(&img, &spec);
        assert_eq!(t.len(), spec.len());
        assert!(t.iter().all(|v| (v - 2.0).abs() < 1e-6), "(1 - 0.5) / 0.25 = 2");
    }

    /// A gradient image (values up to 189 at gain 1), and the same scene at another exposure and
    /// gain; callers keep it below 255, since clipping is what no normalisation can undo.
    fn scene(gain: f32, offset: f32) -> DynamicImage {
        DynamicImage::ImageLuma8(image::GrayImage::from_fn(64, 64, |x, y| {
            image::Luma([(offset + gain * (x + 2 * y) as f32).round().clamp(0.0, 255.0) as u8])
        }))
    }

    /// Mean and standard deviation of a tensor channel.
    fn mean_std(values: &[f32]) -> (f32, f32) {
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = values.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        (mean as f32, var.sqrt() as f32)
    }

    #[test]
    fn per_image_gives_zero_mean_unit_variance_per_channel() {
        let spec = InputSpec::imagenet(32).with_normalize(Normalize::PerImage);
        let t = to_tensor(&scene(1.0, 10.0), &spec);
        for channel in t.chunks_exact(32 * 32) {
            let (mean, std) = mean_std(channel);
            assert!(mean.abs() < 1e-5, "mean {mean}");
            assert!((std - 1.0).abs() < 1e-4, "std {std}");
        }
    }

    #[test]
    fn per_image_is_blind_to_exposure_and_fixed_is_not() {
        let per_image = InputSpec::imagenet(32).with_normalize(Normalize::PerImage);
        let fixed = InputSpec::imagenet(32);
        let max_diff = |spec: &InputSpec| {
            let (a, b) = (to_tensor(&scene(1.0, 10.0), spec), to_tensor(&scene(1.2, 20.0), spec));
            a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max)
        };
        // Rounding to 8 bits is all that differs after per-image normalisation.
        assert!(max_diff(&per_image) < 0.05, "per-image: {}", max_diff(&per_image));
        assert!(max_diff(&fixed) > 0.5, "fixed: {}", max_diff(&fixed));
    }

    #[test]
    fn per_image_keeps_a_flat_frame_finite() {
        let spec = InputSpec::imagenet(32).with_normalize(Normalize::PerImage);
        let img = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(40, 40, image::Luma([200])));
        assert!(to_tensor(&img, &spec).iter().all(|v| *v == 0.0));
    }

    #[test]
    fn manifests_without_normalize_mean_fixed() {
        let old = "width = 64\nheight = 64\nmean = [0.5, 0.5, 0.5]\nstd = [0.25, 0.25, 0.25]\n";
        let spec: InputSpec = toml::from_str(old).unwrap();
        assert_eq!(spec.normalize, Normalize::Fixed);
        let new: InputSpec = toml::from_str(&format!("{old}normalize = \"per_image\"\n")).unwrap();
        assert_eq!(new.normalize, Normalize::PerImage);
        assert!(toml::from_str::<InputSpec>(&format!("{old}normalize = \"auto\"\n")).is_err());
    }

    #[test]
    fn tiles_are_cut_from_one_normalised_canvas() {
        let tiles = Tiles { across: 2, down: 1, overlap: 32 };
        let spec = InputSpec { tiles, ..InputSpec::imagenet(64) }.with_normalize(Normalize::PerImage);
        assert_eq!(spec.canvas(), (96, 64));
        let img = scene(1.0, 10.0);
        let cut = to_tiles(&img, &spec);
        assert_eq!(cut.len(), 2);
        let whole = to_tensor(&img, &InputSpec { width: 96, tiles: Tiles::default(), ..spec.clone() });
        // The second tile's first row is the canvas's row 0 from x = 32.
        assert_eq!(cut[1][..64], whole[32..96]);
        assert_eq!(to_tiles(&img, &InputSpec::imagenet(64)), vec![to_tensor(&img, &InputSpec::imagenet(64))]);
    }

    #[test]
    fn rejects_sizes_the_pyramid_cannot_divide() {
        assert!(InputSpec::imagenet(100).validate().is_err());
        assert!(InputSpec::imagenet(256).validate().is_ok());
    }
}
