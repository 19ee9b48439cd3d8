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

/// The byte length of the first complete frame at the start of `buf`, if there is one yet.
/// Leading bytes before a frame start are skipped by the caller via [`frame_start`].
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    match buf {
        [0xFF, 0xD8, ..] => buf.windows(2).skip(2).position(|w| w == [0xFF, 0xD9]).map(|i| i + 2 + 2),
        [b'P', b'5' | b'6', ..] => pnm_len(buf),
        _ => None,
    }
}

/// Offset of the next plausible frame start (JPEG SOI or PNM magic).
pub fn frame_start(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == [0xFF, 0xD8] || w == b"P5" || w == b"P6")
}

/// Total length of a binary PNM (header + raster) once its header is complete.
fn pnm_len(buf: &[u8]) -> Option<usize> {
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
            return None;
        }
        fields.push(std::str::from_utf8(&buf[start..i]).ok()?.parse::<usize>().ok()?);
    }
    let depth = if fields[2] > 255 { 2 } else { 1 };
    Some(i + 1 + fields[0] * fields[1] * channels * depth)
}

/// JPEG frames go through the camera source's MJPEG decoder, which also takes frames without
/// Huffman tables (an MJPEG camera's stream passed on by `ffmpeg -c:v copy`); PNM through `image`.
fn decode(bytes: &[u8]) -> Result<image::DynamicImage, String> {
    if bytes.starts_with(&[0xFF, 0xD8]) {
        super::pixels::decode_mjpeg(bytes).map_err(|e| e.to_string())
    } else {
        image::load_from_memory(bytes).map_err(|e| e.to_string())
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
        while let Some(start) = frame_start(&buf) {
            let Some(len) = frame_len(&buf[start..]) else {
                buf.drain(..start);
                break;
            };
            if start + len > buf.len() {
                buf.drain(..start);
                break;
            }
            let bytes: Vec<u8> = buf.drain(..start + len).skip(start).collect();
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
        assert_eq!(frame_len(&pgm), Some(pgm.len()));
        assert_eq!(frame_len(&pgm[..pgm.len() - 1]).map(|l| l > pgm.len() - 1), Some(true));
        let jpeg = [0xFF, 0xD8, 1, 2, 0xFF, 0xD9, 9, 9];
        assert_eq!(frame_len(&jpeg), Some(6));
        assert_eq!(frame_len(&jpeg[..5]), None);
        assert_eq!(frame_start(b"xxP6"), Some(2));
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
