//! `pipe`: frames from a command's stdout, e.g.
//! `ffmpeg -i rtsp://cam/stream -f image2pipe -c:v mjpeg -q:v 3 -` (JPEG) or `-c:v pgm`
//! (binary PNM). Frames are split by their own framing: JPEG from SOI (`FF D8`) to EOI
//! (`FF D9`), PNM (`P5`/`P6`) from its header's width, height and maxval.
//! A frame that does not decode is logged and skipped; the stream goes on.

use std::process::Stdio;

use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use super::{Frame, SourceError};
use crate::config::SourceConfig;
use crate::queue::DropOldest;

/// Largest frame taken from a pipe (128 MiB: a 20-megapixel RGB frame at 16 bits is 120 MB).
/// A header declaring more, or a JPEG running past it without its end marker, is skipped: a
/// corrupt or hostile stream must not make the daemon buffer without bound.
pub const MAX_FRAME_BYTES: usize = 128 << 20;

/// Where the first frame of a buffer (starting at its magic bytes) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// A whole frame of this many bytes.
    Complete(usize),
    /// More bytes are needed.
    Partial,
    /// Not a frame that can be taken: a PNM header that does not parse or declares more than
    /// `max` bytes, or a JPEG longer than `max`.
    Invalid,
}

/// How the frame at the start of `buf` stands, for frames of at most `max` bytes.
pub fn framing(buf: &[u8], max: usize) -> Framing {
    match buf {
        [0xFF, 0xD8, ..] => match buf.windows(2).skip(2).position(|w| w == [0xFF, 0xD9]) {
            Some(i) if i + 4 <= max => Framing::Complete(i + 4),
            Some(_) => Framing::Invalid,
            None if buf.len() > max => Framing::Invalid,
            None => Framing::Partial,
        },
        [b'P', b'5' | b'6', ..] => pnm_framing(buf, max),
        _ => Framing::Invalid,
    }
}

/// Offset of the next plausible frame start (JPEG SOI or PNM magic).
pub fn frame_start(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == [0xFF, 0xD8] || w == b"P5" || w == b"P6")
}

/// Longest PNM header taken (comments included) before the stream is judged not PNM.
const PNM_HEADER_MAX: usize = 4096;

/// A binary PNM's framing: its header's width, height and maxval give the raster's length.
fn pnm_framing(buf: &[u8], max: usize) -> Framing {
    let channels = if buf[1] == b'6' { 3 } else { 1 };
    let mut fields = Vec::with_capacity(3);
    let mut i = 2;
    while fields.len() < 3 {
        while i < buf.len() && buf[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < buf.len() && buf[i] == b'#' {
            while i < buf.len() && buf[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let start = i;
        while i < buf.len() && buf[i].is_ascii_digit() {
            i += 1;
        }
        if i >= buf.len() {
            return if i > PNM_HEADER_MAX { Framing::Invalid } else { Framing::Partial };
        }
        // A field must be digits ended by whitespace (the byte after maxval is one too).
        let Some(v) = std::str::from_utf8(&buf[start..i]).ok().and_then(|t| t.parse::<usize>().ok()) else {
            return Framing::Invalid;
        };
        if !buf[i].is_ascii_whitespace() || v == 0 || v > 65535 {
            return Framing::Invalid;
        }
        fields.push(v);
    }
    let depth = if fields[2] > 255 { 2 } else { 1 };
    let raster = fields[0].checked_mul(fields[1]).and_then(|n| n.checked_mul(channels * depth));
    match raster.and_then(|n| n.checked_add(i + 1)) {
        Some(len) if len <= max => {
            if len <= buf.len() {
                Framing::Complete(len)
            } else {
                Framing::Partial
            }
        }
        _ => Framing::Invalid,
    }
}

/// What [`next_frame`] found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A whole frame's bytes, taken out of the buffer (with any junk before it).
    Frame(Vec<u8>),
    /// Bytes that looked like a frame start but were not one (said why), skipped.
    Skipped(&'static str),
    /// Nothing more until more bytes arrive.
    NeedMore,
}

/// Takes the next frame out of a stream buffer, skipping junk before it; bytes that cannot
/// start a frame are dropped, so the buffer stays bounded by `max` plus one read.
pub fn next_frame(buf: &mut Vec<u8>, max: usize) -> Next {
    let Some(start) = frame_start(buf) else {
        // Keep a last byte that may be the first half of a magic.
        let keep = usize::from(buf.last().is_some_and(|&b| b == 0xFF || b == b'P'));
        buf.drain(..buf.len() - keep);
        return Next::NeedMore;
    };
    buf.drain(..start);
    match framing(buf, max) {
        Framing::Complete(len) => Next::Frame(buf.drain(..len).collect()),
        Framing::Partial => Next::NeedMore,
        Framing::Invalid => {
            buf.drain(..2);
            Next::Skipped("not a frame, or over the size limit")
        }
    }
}

/// JPEG frames go through the camera source's MJPEG decoder, which also takes frames without
/// Huffman tables (an MJPEG camera's stream passed on by `ffmpeg -c:v copy`); PNM as image
/// files are. Both refuse a frame whose header declares over 64 MP before decoding it.
pub fn decode(bytes: &[u8]) -> Result<image::DynamicImage, String> {
    if bytes.starts_with(&[0xFF, 0xD8]) {
        super::pixels::decode_mjpeg(bytes).map_err(|e| e.to_string())
    } else {
        crate::preprocess::decode_image(bytes).map_err(|e| e.to_string())
    }
}

pub async fn run(
    cfg: &SourceConfig,
    queue: &DropOldest<Frame>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SourceError> {
    let io = |source| SourceError::Io { path: cfg.command.clone(), source };
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&cfg.command)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(io)?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    let mut seq = 0;
    loop {
        let n = tokio::select! {
            n = stdout.read(&mut chunk) => n.map_err(io)?,
            _ = shutdown.changed() => return Ok(()),
        };
        if n == 0 {
            tracing::info!(command = %cfg.command, "pipe source ended");
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let bytes = match next_frame(&mut buf, MAX_FRAME_BYTES) {
                Next::Frame(bytes) => bytes,
                Next::Skipped(why) => {
                    tracing::warn!(command = %cfg.command, frame = seq, "skipping bytes in the stream: {why}");
                    continue;
                }
                Next::NeedMore => break,
            };
            let decoded = tokio::task::spawn_blocking(move || decode(&bytes))
                .await
                .map_err(|e| SourceError::Data(format!("{}: decoding frame {seq}: {e}", cfg.command)))?;
            match decoded {
                Ok(img) => {
                    if !queue.push(Frame::new(seq, img, format!("pipe:{seq}"))) {
                        return Ok(());
                    }
                    seq += 1;
                }
                Err(e) => tracing::warn!(command = %cfg.command, frame = seq, error = %e, "skipping undecodable frame"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pnm_and_jpeg_frames_are_split_by_their_own_framing() {
        let mut pgm = b"P5\n# c\n4 2\n255\n".to_vec();
        pgm.extend([7u8; 8]);
        assert_eq!(framing(&pgm, 1000), Framing::Complete(pgm.len()));
        assert_eq!(framing(&pgm[..pgm.len() - 1], 1000), Framing::Partial);
        assert_eq!(framing(&pgm, pgm.len() - 1), Framing::Invalid, "over the limit");
        let jpeg = [0xFF, 0xD8, 1, 2, 0xFF, 0xD9, 9, 9];
        assert_eq!(framing(&jpeg, 1000), Framing::Complete(6));
        assert_eq!(framing(&jpeg[..5], 1000), Framing::Partial);
        assert_eq!(framing(&jpeg[..5], 4), Framing::Invalid, "no end marker within the limit");
        assert_eq!(frame_start(b"xxP6"), Some(2));
    }

    /// Headers that would overflow, declare a giant raster, or never end are skipped, and the
    /// frame behind them is still found; junk never piles up in the buffer.
    #[test]
    fn bad_headers_are_skipped_and_the_buffer_stays_bounded() {
        let overflow = format!("P6 {} {} 255 ", usize::MAX / 2, 3);
        assert_eq!(framing(overflow.as_bytes(), MAX_FRAME_BYTES), Framing::Invalid);
        assert_eq!(framing(b"P5 60000 60000 65535 ", MAX_FRAME_BYTES), Framing::Invalid);
        assert_eq!(framing(b"P5 4 2x255 ", 1000), Framing::Invalid);
        let endless = [b"P5 ".as_slice(), &[b'#'; PNM_HEADER_MAX + 10]].concat();
        assert_eq!(framing(&endless, MAX_FRAME_BYTES), Framing::Invalid, "a header that never ends");
        assert_eq!(framing(b"P5 # a comment still being rea", MAX_FRAME_BYTES), Framing::Partial);
        let mut stream = b"P6 99999999 99999999 255 junkP5 4 2 255\n".to_vec();
        stream.extend([7u8; 8]);
        let mut frames = Vec::new();
        while let n @ (Next::Frame(_) | Next::Skipped(_)) = next_frame(&mut stream, 1000) {
            frames.push(n);
        }
        assert_eq!(frames.first(), Some(&Next::Skipped("not a frame, or over the size limit")));
        assert!(matches!(frames.last(), Some(Next::Frame(f)) if f.starts_with(b"P5 4 2")));
        let mut junk = vec![0u8; 10_000];
        assert_eq!(next_frame(&mut junk, 1000), Next::NeedMore);
        assert!(junk.is_empty());
    }

    #[test]
    fn jpeg_without_huffman_tables_and_pnm_decode() {
        use crate::source::pixels::tests::{jpeg, strip_huffman_tables};
        let img = image::RgbImage::from_fn(16, 8, |x, y| image::Rgb([(x * 16) as u8, (y * 32) as u8, 7]));
        let bare = strip_huffman_tables(&jpeg(&img));
        assert_eq!(decode(&bare).unwrap().to_rgb8().dimensions(), (16, 8));
        let mut pgm = b"P5\n4 2\n255\n".to_vec();
        pgm.extend([7u8; 8]);
        assert_eq!(decode(&pgm).unwrap().to_luma8().as_raw(), &[7u8; 8]);
    }
}
