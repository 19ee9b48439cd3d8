//! Raw camera buffers to images: the part of the camera source that needs no camera.
//!
//! Cameras hand over MJPEG, YUYV 4:2:2, NV12, GREY or packed RGB/BGR bytes (UVC), or 8/10/12/16-bit
//! mono and 8-bit Bayer mosaics (GenICam's Mono8..16, BayerRG8..). The detector wants
//! an RGB or gray image; gray is cheaper (YUYV/NV12 → gray is just the Y plane) and the model
//! sees gray as three equal channels anyway.

use crate::preprocess::{MAX_DECODED_PIXELS, guarded, over_pixel_limit};
use image::{DynamicImage, GrayImage, RgbImage};
use serde::{Deserialize, Serialize};

/// The pixel layout of a raw camera buffer.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PixelFormat {
    Mjpeg,
    Yuyv,
    Nv12,
    Gray,
    Rgb,
    Bgr,
    /// 10-, 12- or 16-bit gray in little-endian 16-bit words (GenICam Mono10/Mono12/Mono16).
    Gray10,
    Gray12,
    Gray16,
    /// 8-bit Bayer mosaics, named by their top-left 2x2 cell (GenICam BayerRG8, ...).
    BayerRggb,
    BayerGrbg,
    BayerGbrg,
    BayerBggr,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PixelError {
    #[error("{format:?} frame of {width}x{height} needs {want} bytes, got {got}")]
    Size { format: PixelFormat, width: u32, height: u32, want: usize, got: usize },
    #[error("{format:?} frame of {width}x{height}: width must be even")]
    OddWidth { format: PixelFormat, width: u32, height: u32 },
    #[error("Nv12 frame of {width}x{height}: height must be even")]
    OddHeight { width: u32, height: u32 },
    #[error("MJPEG frame does not decode: {0}")]
    Jpeg(String),
    #[error("MJPEG frame declares {declared_w}x{declared_h} pixels, more than the camera's {width}x{height}")]
    JpegLargerThanMode { declared_w: u32, declared_h: u32, width: u32, height: u32 },
    #[error("JPEG frame declares {declared_w}x{declared_h} pixels, over the {MAX_DECODED_PIXELS}-pixel limit")]
    JpegTooLarge { declared_w: u32, declared_h: u32 },
}

/// Converts one raw buffer of `width`×`height` pixels; `gray` asks for a one-channel image.
pub fn to_image(
    format: PixelFormat,
    width: u32,
    height: u32,
    bytes: &[u8],
    gray: bool,
) -> Result<DynamicImage, PixelError> {
    let img = match format {
        PixelFormat::Mjpeg => decode_jpeg(bytes, Some((width, height)))?,
        PixelFormat::Gray => DynamicImage::ImageLuma8(gray_plane(format, width, height, bytes, 1, 1)?),
        PixelFormat::Yuyv if gray => DynamicImage::ImageLuma8(gray_plane(format, width, height, bytes, 2, 2)?),
        PixelFormat::Yuyv => DynamicImage::ImageRgb8(yuyv_to_rgb(width, height, bytes)?),
        PixelFormat::Nv12 if gray => DynamicImage::ImageLuma8(nv12_luma(width, height, bytes)?),
        PixelFormat::Nv12 => DynamicImage::ImageRgb8(nv12_to_rgb(width, height, bytes)?),
        PixelFormat::Rgb | PixelFormat::Bgr => DynamicImage::ImageRgb8(packed_rgb(format, width, height, bytes)?),
        PixelFormat::Gray10 | PixelFormat::Gray12 | PixelFormat::Gray16 => {
            DynamicImage::ImageLuma8(gray_words(format, width, height, bytes)?)
        }
        PixelFormat::BayerRggb | PixelFormat::BayerGrbg | PixelFormat::BayerGbrg | PixelFormat::BayerBggr => {
            DynamicImage::ImageRgb8(demosaic(format, width, height, bytes)?)
        }
    };
    Ok(if gray && img.color() != image::ColorType::L8 { DynamicImage::ImageLuma8(img.to_luma8()) } else { img })
}

/// The pixels in a `width`×`height` frame, once `got` bytes are checked to hold `bytes_per_px`
/// of each; a size error also when that product overflows (absurd reported dimensions).
fn frame_pixels(
    format: PixelFormat,
    width: u32,
    height: u32,
    got: usize,
    bytes_per_px: usize,
) -> Result<usize, PixelError> {
    let n = width as usize * height as usize;
    let want = n.checked_mul(bytes_per_px).ok_or(PixelError::Size { format, width, height, want: usize::MAX, got })?;
    check_len(format, width, height, got, want)?;
    Ok(n)
}

fn check_len(format: PixelFormat, width: u32, height: u32, got: usize, want: usize) -> Result<(), PixelError> {
    // Some drivers pad the last line or the buffer; fewer bytes than a whole frame is an error.
    if got < want { Err(PixelError::Size { format, width, height, want, got }) } else { Ok(()) }
}

fn check_even(format: PixelFormat, width: u32, height: u32) -> Result<(), PixelError> {
    if width % 2 == 1 { Err(PixelError::OddWidth { format, width, height }) } else { Ok(()) }
}

/// NV12 subsamples chroma 2×2: both sides must be even.
fn check_even_nv12(width: u32, height: u32) -> Result<(), PixelError> {
    check_even(PixelFormat::Nv12, width, height)?;
    if height % 2 == 1 { Err(PixelError::OddHeight { width, height }) } else { Ok(()) }
}

/// Every `step`-th byte from the start: the Y samples of GREY (step 1) or YUYV (step 2).
fn gray_plane(
    format: PixelFormat,
    width: u32,
    height: u32,
    bytes: &[u8],
    bytes_per_px: usize,
    step: usize,
) -> Result<GrayImage, PixelError> {
    let n = frame_pixels(format, width, height, bytes.len(), bytes_per_px)?;
    let y: Vec<u8> = bytes.iter().step_by(step).take(n).copied().collect();
    Ok(GrayImage::from_raw(width, height, y).expect("length checked"))
}

fn nv12_luma(width: u32, height: u32, bytes: &[u8]) -> Result<GrayImage, PixelError> {
    check_even_nv12(width, height)?;
    // The Y plane, then half as many bytes of interleaved chroma.
    let n = frame_pixels(PixelFormat::Nv12, width, height, bytes.len(), 1)?;
    let want = n.saturating_add(n / 2);
    check_len(PixelFormat::Nv12, width, height, bytes.len(), want)?;
    Ok(GrayImage::from_raw(width, height, bytes[..n].to_vec()).expect("length checked"))
}

/// BT.601 limited-range YCbCr to RGB, the matrix UVC cameras use for YUYV and NV12.
fn ycbcr_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let c = 1.164 * (f32::from(y) - 16.0);
    let d = f32::from(cb) - 128.0;
    let e = f32::from(cr) - 128.0;
    let clamp = |v: f32| v.round().clamp(0.0, 255.0) as u8;
    [clamp(c + 1.596 * e), clamp(c - 0.392 * d - 0.813 * e), clamp(c + 2.017 * d)]
}

fn yuyv_to_rgb(width: u32, height: u32, bytes: &[u8]) -> Result<RgbImage, PixelError> {
    check_even(PixelFormat::Yuyv, width, height)?;
    let n = frame_pixels(PixelFormat::Yuyv, width, height, bytes.len(), 2)?;
    let mut out = Vec::with_capacity(n * 3);
    // Each 4-byte group [Y0 U Y1 V] carries two pixels sharing one chroma pair.
    for g in bytes[..n * 2].chunks_exact(4) {
        out.extend_from_slice(&ycbcr_to_rgb(g[0], g[1], g[3]));
        out.extend_from_slice(&ycbcr_to_rgb(g[2], g[1], g[3]));
    }
    Ok(RgbImage::from_raw(width, height, out).expect("length checked"))
}

fn nv12_to_rgb(width: u32, height: u32, bytes: &[u8]) -> Result<RgbImage, PixelError> {
    let (w, h) = (width as usize, height as usize);
    let luma = nv12_luma(width, height, bytes)?;
    // After the Y plane: one interleaved [Cb Cr] pair per 2×2 block.
    let chroma = &bytes[w * h..];
    let rgb = RgbImage::from_fn(width, height, |x, y| {
        let (x, y) = (x as usize, y as usize);
        let c = (y / 2) * w + (x / 2) * 2;
        image::Rgb(ycbcr_to_rgb(luma.as_raw()[y * w + x], chroma[c], chroma[c + 1]))
    });
    debug_assert_eq!(rgb.len(), w * h * 3);
    Ok(rgb)
}

fn packed_rgb(format: PixelFormat, width: u32, height: u32, bytes: &[u8]) -> Result<RgbImage, PixelError> {
    let n = frame_pixels(format, width, height, bytes.len(), 3)?;
    let mut px = bytes[..n * 3].to_vec();
    if format == PixelFormat::Bgr {
        px.chunks_exact_mut(3).for_each(|p| p.swap(0, 2));
    }
    Ok(RgbImage::from_raw(width, height, px).expect("length checked"))
}

/// 16-bit little-endian gray words, their top 8 significant bits kept.
fn gray_words(format: PixelFormat, width: u32, height: u32, bytes: &[u8]) -> Result<GrayImage, PixelError> {
    let n = frame_pixels(format, width, height, bytes.len(), 2)?;
    let shift = match format {
        PixelFormat::Gray10 => 2,
        PixelFormat::Gray12 => 4,
        _ => 8,
    };
    let px = bytes[..n * 2].chunks_exact(2).map(|w| (u16::from_le_bytes([w[0], w[1]]) >> shift).min(255) as u8);
    Ok(GrayImage::from_raw(width, height, px.collect()).expect("length checked"))
}

/// Bilinear demosaic of an 8-bit Bayer frame: each pixel keeps its own colour and takes the
/// other two as the mean of the 3x3 neighbours that carry them (edges clamped).
fn demosaic(format: PixelFormat, width: u32, height: u32, bytes: &[u8]) -> Result<RgbImage, PixelError> {
    let n = frame_pixels(format, width, height, bytes.len(), 1)?;
    let (w, h) = (width as usize, height as usize);
    // The colour (0 = R, 1 = G, 2 = B) of the top-left 2x2 cell, row by row.
    let cell: [usize; 4] = match format {
        PixelFormat::BayerRggb => [0, 1, 1, 2],
        PixelFormat::BayerGrbg => [1, 0, 2, 1],
        PixelFormat::BayerGbrg => [1, 2, 0, 1],
        _ => [2, 1, 1, 0],
    };
    let colour = |x: usize, y: usize| cell[(y % 2) * 2 + x % 2];
    let raw = &bytes[..n];
    let mut out = Vec::with_capacity(n * 3);
    for y in 0..h {
        for x in 0..w {
            let (mut sum, mut count) = ([0u32; 3], [0u32; 3]);
            for yy in y.saturating_sub(1)..(y + 2).min(h) {
                for xx in x.saturating_sub(1)..(x + 2).min(w) {
                    let c = colour(xx, yy);
                    sum[c] += u32::from(raw[yy * w + xx]);
                    count[c] += 1;
                }
            }
            let own = colour(x, y);
            for c in 0..3 {
                let v = if c == own { u32::from(raw[y * w + x]) } else { sum[c] / count[c].max(1) };
                out.push(v as u8);
            }
        }
    }
    Ok(RgbImage::from_raw(width, height, out).expect("length checked"))
}

/// Decodes one JPEG frame of a stream that no camera mode bounds (a pipe), up to
/// [`MAX_DECODED_PIXELS`].
pub fn decode_mjpeg(bytes: &[u8]) -> Result<DynamicImage, PixelError> {
    decode_jpeg(bytes, None)
}

/// Decodes one (M)JPEG frame once its header's size is checked: within the camera's mode
/// (`width` x `height`, rounded up to whole 16-pixel blocks, as some encoders pad) when there
/// is one, else within [`MAX_DECODED_PIXELS`]. UVC cameras often leave out the Huffman tables (no
/// DHT segment) and rely on the standard ones of JPEG Annex K, which the decoder does not
/// assume: those frames get the standard tables put in front of their scan.
fn decode_jpeg(bytes: &[u8], mode: Option<(u32, u32)>) -> Result<DynamicImage, PixelError> {
    let with_tables;
    let bytes = match scan_start_without_tables(bytes) {
        Some(sos) => {
            with_tables = [&bytes[..sos], &standard_dht_segment(), &bytes[sos..]].concat();
            &with_tables[..]
        }
        None => bytes,
    };
    let reader = || image::ImageReader::with_format(std::io::Cursor::new(bytes), image::ImageFormat::Jpeg);
    let jpeg_error = |e: image::ImageError| PixelError::Jpeg(e.to_string());
    let (declared_w, declared_h) = guarded(|| reader().into_dimensions()).map_err(jpeg_error)?;
    let whole_blocks = |n: u32| n.div_ceil(16).saturating_mul(16);
    match mode {
        Some((width, height)) if declared_w > whole_blocks(width) || declared_h > whole_blocks(height) => {
            Err(PixelError::JpegLargerThanMode { declared_w, declared_h, width, height })
        }
        None if over_pixel_limit(declared_w, declared_h) => Err(PixelError::JpegTooLarge { declared_w, declared_h }),
        _ => guarded(|| reader().decode()).map_err(jpeg_error),
    }
}

/// The offset of the start-of-scan marker when no DHT segment comes before it.
fn scan_start_without_tables(jpeg: &[u8]) -> Option<usize> {
    if !jpeg.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut i = 2;
    while i + 4 <= jpeg.len() && jpeg[i] == 0xFF {
        match jpeg[i + 1] {
            0xC4 => return None,
            0xDA => return Some(i),
            _ => i += 2 + (usize::from(jpeg[i + 2]) << 8 | usize::from(jpeg[i + 3])),
        }
    }
    None
}

/// One DHT segment with the four tables of JPEG Annex K.3 (luminance and chrominance, DC and AC).
fn standard_dht_segment() -> Vec<u8> {
    const DC_LUMA_BITS: [u8; 16] = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
    const DC_CHROMA_BITS: [u8; 16] = [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
    const DC_VALUES: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
    const AC_LUMA_BITS: [u8; 16] = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d];
    const AC_CHROMA_BITS: [u8; 16] = [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77];
    // Each AC table starts with its short codes in the standard's order; all other (run, size)
    // symbols follow in ascending order, which is how Annex K lists them.
    const AC_LUMA_HEAD: [u8; 41] = [
        0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07, 0x22, 0x71,
        0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52, 0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72,
        0x82, 0x09, 0x0a, 0x16, 0x17,
    ];
    const AC_CHROMA_HEAD: [u8; 44] = [
        0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71, 0x13, 0x22,
        0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33, 0x52, 0xf0, 0x15, 0x62, 0x72, 0xd1,
        0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17,
    ];
    let ac_values = |head: &[u8]| -> Vec<u8> {
        let all = (0..=15u8).flat_map(|run| (1..=10u8).map(move |size| run << 4 | size));
        let rest = all.filter(|v| !head.contains(v) && *v != 0x00 && *v != 0xf0);
        head.iter().copied().chain(rest).collect()
    };
    let tables: [(u8, &[u8; 16], Vec<u8>); 4] = [
        (0x00, &DC_LUMA_BITS, DC_VALUES.to_vec()),
        (0x10, &AC_LUMA_BITS, ac_values(&AC_LUMA_HEAD)),
        (0x01, &DC_CHROMA_BITS, DC_VALUES.to_vec()),
        (0x11, &AC_CHROMA_BITS, ac_values(&AC_CHROMA_HEAD)),
    ];
    let mut body = Vec::new();
    for (class_and_id, bits, values) in &tables {
        debug_assert_eq!(bits.iter().map(|&b| usize::from(b)).sum::<usize>(), values.len());
        body.push(*class_and_id);
        body.extend_from_slice(*bits);
        body.extend_from_slice(values);
    }
    let len = u16::try_from(body.len() + 2).expect("DHT fits a segment");
    [&[0xFF, 0xC4][..], &len.to_be_bytes(), &body].concat()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use image::ImageEncoder;

    #[test]
    fn deep_gray_keeps_its_top_eight_bits() {
        let words: Vec<u8> = [4095u16, 2048, 0, 1023].iter().flat_map(|v| v.to_le_bytes()).collect();
        let img = to_image(PixelFormat::Gray12, 2, 2, &words, false).unwrap().to_luma8();
        assert_eq!(img.as_raw(), &[255, 128, 0, 63]);
        let ten = to_image(PixelFormat::Gray10, 2, 2, &words, false).unwrap().to_luma8();
        assert_eq!(ten.as_raw()[3], 255, "1023 is Mono10's white");
        assert!(matches!(to_image(PixelFormat::Gray16, 2, 2, &words[..6], false), Err(PixelError::Size { .. })));
    }

    #[test]
    fn a_flat_colour_survives_every_bayer_layout() {
        // A uniform (R, G, B) = (200, 100, 50) scene as each mosaic samples it.
        for (format, cell) in [
            (PixelFormat::BayerRggb, [200, 100, 100, 50]),
            (PixelFormat::BayerGrbg, [100, 200, 50, 100]),
            (PixelFormat::BayerGbrg, [100, 50, 200, 100]),
            (PixelFormat::BayerBggr, [50, 100, 100, 200]),
        ] {
            let raw: Vec<u8> = (0..6 * 4).map(|i| cell[((i / 6) % 2) * 2 + (i % 6) % 2]).collect();
            let img = to_image(format, 6, 4, &raw, false).unwrap().to_rgb8();
            assert!(img.pixels().all(|p| p.0 == [200, 100, 50]), "{format:?}: {:?}", img.get_pixel(1, 1));
        }
    }

    pub(crate) fn jpeg(img: &RgbImage) -> Vec<u8> {
        let mut buf = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 90)
            .write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
            .unwrap();
        buf
    }

    /// Removes every DHT (0xFFC4) segment, as many UVC cameras send MJPEG.
    pub(crate) fn strip_huffman_tables(jpeg: &[u8]) -> Vec<u8> {
        let mut out = jpeg[..2].to_vec();
        let mut i = 2;
        while i + 4 <= jpeg.len() && jpeg[i] == 0xFF && jpeg[i + 1] != 0xDA {
            let len = usize::from(jpeg[i + 2]) << 8 | usize::from(jpeg[i + 3]);
            if jpeg[i + 1] != 0xC4 {
                out.extend_from_slice(&jpeg[i..i + 2 + len]);
            }
            i += 2 + len;
        }
        out.extend_from_slice(&jpeg[i..]);
        out
    }

    #[test]
    fn yuyv_primaries_and_gray() {
        // Y=81 U=90 V=240 is BT.601 red; Y=145 U=54 V=34 is green; two pixels per group.
        let bytes = [81, 90, 81, 240, 145, 54, 145, 34];
        let img = to_image(PixelFormat::Yuyv, 4, 1, &bytes, false).unwrap().to_rgb8();
        let red = img.get_pixel(0, 0).0;
        let green = img.get_pixel(2, 0).0;
        assert!(red[0] > 240 && red[1] < 10 && red[2] < 10, "{red:?}");
        assert!(green[1] > 240 && green[0] < 10 && green[2] < 10, "{green:?}");
        let gray = to_image(PixelFormat::Yuyv, 4, 1, &bytes, true).unwrap();
        assert_eq!(gray.to_luma8().as_raw(), &[81, 81, 145, 145]);
    }

    #[test]
    fn nv12_shares_chroma_per_two_by_two_block() {
        // 2×2 Y of 235 (white) with neutral chroma → white everywhere.
        let bytes = [235, 235, 235, 235, 128, 128];
        let img = to_image(PixelFormat::Nv12, 2, 2, &bytes, false).unwrap().to_rgb8();
        assert!(img.pixels().all(|p| p.0 == [255, 255, 255]), "{img:?}");
    }

    #[test]
    fn gray_and_bgr_are_taken_as_they_are() {
        let img = to_image(PixelFormat::Gray, 3, 1, &[1, 2, 3], false).unwrap();
        assert_eq!(img.to_luma8().as_raw(), &[1, 2, 3]);
        let img = to_image(PixelFormat::Bgr, 1, 1, &[10, 20, 30], false).unwrap();
        assert_eq!(img.to_rgb8().as_raw(), &[30, 20, 10]);
    }

    #[test]
    fn short_or_odd_buffers_are_errors_not_panics() {
        let e = to_image(PixelFormat::Yuyv, 4, 2, &[0; 10], false).unwrap_err();
        assert_eq!(e, PixelError::Size { format: PixelFormat::Yuyv, width: 4, height: 2, want: 16, got: 10 });
        assert!(e.to_string().contains("needs 16 bytes, got 10"));
        assert!(matches!(to_image(PixelFormat::Yuyv, 3, 1, &[0; 6], false), Err(PixelError::OddWidth { .. })));
        assert!(matches!(to_image(PixelFormat::Mjpeg, 8, 8, b"not a jpeg", false), Err(PixelError::Jpeg(_))));
    }

    #[test]
    fn mjpeg_with_and_without_huffman_tables() {
        let src = RgbImage::from_fn(32, 16, |x, y| image::Rgb([(x * 8) as u8, (y * 16) as u8, 128]));
        let full = jpeg(&src);
        let bare = strip_huffman_tables(&full);
        assert!(bare.len() < full.len(), "the test JPEG had DHT segments to strip");
        let decoded = |b: &[u8]| to_image(PixelFormat::Mjpeg, 32, 16, b, false).unwrap().to_rgb8();
        assert_eq!(decoded(&bare), decoded(&full), "standard tables decode as the encoder's own");
        for bytes in [&full, &bare] {
            let img = to_image(PixelFormat::Mjpeg, 32, 16, bytes, false).unwrap().to_rgb8();
            assert_eq!(img.dimensions(), (32, 16));
            let err = img.pixels().zip(src.pixels()).map(|(a, b)| (i32::from(a.0[0]) - i32::from(b.0[0])).abs()).max();
            assert!(err.unwrap() < 16, "decoded red channel off by {err:?}");
        }
        let gray = to_image(PixelFormat::Mjpeg, 32, 16, &full, true).unwrap();
        assert_eq!(gray.color(), image::ColorType::L8);
    }

    /// `jpeg` with the size in its frame header (SOF0) replaced, the rest untouched.
    pub(crate) fn declaring(jpeg: &[u8], width: u16, height: u16) -> Vec<u8> {
        let mut out = jpeg.to_vec();
        let sof = out.windows(2).position(|w| w == [0xFF, 0xC0]).expect("a baseline JPEG");
        out[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
        out[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
        out
    }

    #[test]
    fn a_jpeg_declaring_more_pixels_than_it_may_is_refused_before_it_is_decoded() {
        // Found by fuzzing: a 713-byte camera buffer declaring 60688 x 1288 pixels took 12 s
        // and 230 MB to decode for a camera in a 16 x 8 mode.
        let full = jpeg(&RgbImage::from_pixel(32, 16, image::Rgb([90, 120, 150])));
        let e = to_image(PixelFormat::Mjpeg, 16, 8, &full, false).unwrap_err();
        assert_eq!(e, PixelError::JpegLargerThanMode { declared_w: 32, declared_h: 16, width: 16, height: 8 });
        assert!(e.to_string().contains("32x16") && e.to_string().contains("16x8"), "{e}");
        // Within whole 16-pixel blocks of the mode: encoders that pad are still served.
        assert_eq!(to_image(PixelFormat::Mjpeg, 30, 14, &full, false).unwrap().width(), 32);
        // No mode (a piped stream): the pixel limit.
        let bomb = declaring(&full, 65535, 65535);
        assert!(matches!(decode_mjpeg(&bomb), Err(PixelError::JpegTooLarge { declared_w: 65535, declared_h: 65535 })));
        assert_eq!(decode_mjpeg(&full).unwrap().height(), 16);
    }
}
