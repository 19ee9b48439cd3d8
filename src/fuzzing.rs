//! The untrusted-input entry points, one function per fuzz target: the fuzz targets
//! (`fuzz/`, cargo-fuzz and libFuzzer, run by `tools/fuzz`) and their regression test
//! (`tests/fuzz_regressions.rs`, every input under `fuzz/regressions/`) call these same
//! functions, so an input that once crashed is replayed on every test run.
//!
//! Each takes arbitrary bytes and must return, never panic, whatever the bytes are. Errors
//! are the expected outcome for most inputs and are ignored here.

use crate::source::pixels::PixelFormat;

/// An MQTT command payload on `cmd/<name>`; the first byte picks the name.
pub fn command(data: &[u8]) {
    let Some((&pick, payload)) = data.split_first() else { return };
    let name = ["trigger", "threshold", "reload", "review", "other"][usize::from(pick) % 5];
    let _ = crate::sink::mqtt::parse_command(name, payload);
}

/// A bundle manifest's text, parsed and checked as the daemon does before it opens any
/// file the manifest names; then the shapes it derives from it.
pub fn manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(m) = crate::bundle::parse_manifest("fuzz/bundle.toml".into(), text) else { return };
    let _ = crate::detector::level_shapes(&m);
    let _ = m.input.canvas();
    let _ = crate::detector::Precision::of(&m);
}

/// A camera buffer: the first 5 bytes pick the pixel format, width, height and gray; the
/// rest is the buffer.
pub fn pixels(data: &[u8]) {
    let [f, w0, w1, h0, h1, rest @ ..] = data else { return };
    const FORMATS: [PixelFormat; 6] = [
        PixelFormat::Mjpeg,
        PixelFormat::Yuyv,
        PixelFormat::Nv12,
        PixelFormat::Gray,
        PixelFormat::Rgb,
        PixelFormat::Bgr,
    ];
    let format = FORMATS[usize::from(*f) % FORMATS.len()];
    // Widths up to 2^16 and heights stretched by the top bit, so sizes whose products
    // overflow 32 bits are reached too.
    let width = u32::from(u16::from_le_bytes([*w0, *w1]));
    let height = u32::from(u16::from_le_bytes([*h0, *h1])) << ((f >> 7) * 15);
    let _ = crate::source::pixels::to_image(format, width, height, rest, f & 0x40 != 0);
}

/// A piped stream (`source.kind = "pipe"`): split into frames (with a small frame limit, so
/// the limit is reached) and each frame decoded, as the pipe source does.
pub fn pipe_stream(data: &[u8]) {
    use crate::source::pipe::{Next, next_frame};
    let mut buf = Vec::new();
    // Arrives in 4 KiB reads, as a stream would.
    for chunk in data.chunks(4096) {
        buf.extend_from_slice(chunk);
        loop {
            match next_frame(&mut buf, 1 << 20) {
                Next::Frame(bytes) => {
                    let _ = crate::source::pipe::decode(&bytes);
                }
                Next::Skipped(_) => {}
                Next::NeedMore => break,
            }
        }
    }
}

/// An image file's bytes as `dskd infer`, `dskd eval` and the `dir` source decode them.
pub fn image_file(data: &[u8]) {
    let _ = crate::preprocess::decode_image(data);
}
