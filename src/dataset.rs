//! Labelled image sets on disk: split files (`role<TAB>path`) and copies of them resized for
//! carrying (`dskd resize`).
//!
//! A split file lists one image per line as `role<TAB>path`, the path relative to the file;
//! `#` starts a comment. Roles: `train` (fit the students), `val` (held-out normals: checkpoint
//! choice and threshold calibration), `test` (evaluation only). A test image's mask, where it
//! has one, is the same path with the extension `.png`.

use std::path::{Path, PathBuf};

use image::{DynamicImage, imageops::FilterType};

use crate::preprocess::{self, PreprocessError};

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Split { path: PathBuf, line: usize, message: String },
    #[error(transparent)]
    Image(#[from] PreprocessError),
    #[error("{path}: {source}")]
    Write { path: PathBuf, source: image::ImageError },
}

/// The three roles a split file may give an image.
pub const ROLES: [&str; 3] = ["train", "val", "test"];

/// One line of a split file.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub role: String,
    /// Absolute or relative to the current directory (the file's folder joined in).
    pub path: PathBuf,
    /// The path as written in the file.
    pub rel: String,
}

/// Reads a split file; every line must name a known role.
pub fn read_split(file: &Path) -> Result<Vec<Entry>, DatasetError> {
    let text = std::fs::read_to_string(file).map_err(|source| DatasetError::Io { path: file.to_owned(), source })?;
    let base = file.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |message: String| DatasetError::Split { path: file.to_owned(), line: i + 1, message };
        let (role, rel) = line.split_once('\t').ok_or_else(|| bad("expected `role<TAB>path`".into()))?;
        if !ROLES.contains(&role) {
            return Err(bad(format!("unknown role `{role}` (train, val or test)")));
        }
        out.push(Entry { role: role.into(), path: base.join(rel), rel: rel.into() });
    }
    Ok(out)
}

/// Options of [`resize_split`].
#[derive(Debug, Clone)]
pub struct ResizeOptions {
    pub width: u32,
    pub height: u32,
    /// Roles to copy (others are left out of the new split).
    pub roles: Vec<String>,
    /// JPEG quality (1-100), or `None` for lossless PNG.
    pub jpeg_quality: Option<u8>,
}

/// Copies the images of `roles` in a split file, resized exactly as the detector resizes them
/// (bilinear, aspect not kept), into `out` with a new `split.tsv`. Gray images stay gray.
/// Made for carrying a training set to a GPU machine: training on the copy sees the same
/// pixels as training on the originals, up to JPEG's loss when `jpeg_quality` is set.
/// Returns the number of images written.
pub fn resize_split(file: &Path, out: &Path, opts: &ResizeOptions) -> Result<usize, DatasetError> {
    let entries = read_split(file)?;
    std::fs::create_dir_all(out).map_err(|source| DatasetError::Io { path: out.to_owned(), source })?;
    let mut lines = vec![format!("# {} resized to {}x{} by `dskd resize`", file.display(), opts.width, opts.height)];
    for (n, e) in entries.iter().filter(|e| opts.roles.contains(&e.role)).enumerate() {
        let img = preprocess::load_image(&e.path)?;
        let small = match img {
            DynamicImage::ImageLuma8(g) => {
                DynamicImage::ImageLuma8(image::imageops::resize(&g, opts.width, opts.height, FilterType::Triangle))
            }
            other => {
                let spec = preprocess::InputSpec {
                    width: opts.width,
                    height: opts.height,
                    ..preprocess::InputSpec::imagenet(32)
                };
                DynamicImage::ImageRgb8(preprocess::resize_rgb(&other, &spec))
            }
        };
        let ext = if opts.jpeg_quality.is_some() { "jpg" } else { "png" };
        let rel = format!("{}/{n:05}.{ext}", e.role);
        let dest = out.join(&rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|source| DatasetError::Io { path: parent.to_owned(), source })?;
        }
        save(&small, &dest, opts.jpeg_quality)?;
        lines.push(format!("{}\t{rel}", e.role));
    }
    let split = out.join("split.tsv");
    std::fs::write(&split, lines.join("\n") + "\n").map_err(|source| DatasetError::Io { path: split, source })?;
    Ok(lines.len() - 1)
}

fn save(img: &DynamicImage, dest: &Path, jpeg_quality: Option<u8>) -> Result<(), DatasetError> {
    let err = |source| DatasetError::Write { path: dest.to_owned(), source };
    match jpeg_quality {
        None => img.save(dest).map_err(err),
        Some(q) => {
            let f = std::fs::File::create(dest).map_err(|source| DatasetError::Io { path: dest.to_owned(), source })?;
            let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(std::io::BufWriter::new(f), q.clamp(1, 100));
            img.write_with_encoder(enc).map_err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_lines_are_read_with_roles_and_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.tsv");
        std::fs::write(&f, "# c\ntrain\ta.png\n\nval\tb/c.png\n").unwrap();
        let e = read_split(&f).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!((e[1].role.as_str(), e[1].path.clone()), ("val", dir.path().join("b/c.png")));
        std::fs::write(&f, "train\ta.png\nfoo\tb.png\n").unwrap();
        let msg = read_split(&f).unwrap_err().to_string();
        assert!(msg.contains("s.tsv:2") && msg.contains("unknown role `foo`"), "{msg}");
    }

    #[test]
    fn resized_copy_matches_the_detectors_resize() {
        let dir = tempfile::tempdir().unwrap();
        let g = crate::synth::normal(3, 0, 80);
        let src = dir.path().join("a.png");
        image::imageops::resize(&g, 70, 90, FilterType::Nearest).save(&src).unwrap();
        std::fs::write(dir.path().join("s.tsv"), "train\ta.png\ntest\ta.png\n").unwrap();
        let out = dir.path().join("small");
        let opts = ResizeOptions { width: 64, height: 64, roles: vec!["train".into()], jpeg_quality: None };
        assert_eq!(resize_split(&dir.path().join("s.tsv"), &out, &opts).unwrap(), 1);
        let copy = read_split(&out.join("split.tsv")).unwrap();
        assert_eq!(copy.len(), 1);
        let spec = preprocess::InputSpec::imagenet(64);
        let a = preprocess::to_tensor(&preprocess::load_image(&src).unwrap(), &spec);
        let b = preprocess::to_tensor(&preprocess::load_image(&copy[0].path).unwrap(), &spec);
        assert_eq!(a, b, "training on the copy sees the detector's pixels");
    }
}
