//! Training data: a folder of good images, or a split file with roles.
//!
//! A folder gives train and held-out normal images (every `1/val_fraction`-th file in sorted
//! order goes to val). A split file (`role<TAB>path`, `#` comments, paths relative to the
//! file; see [`crate::dataset`]) gives `train` and `val` directly; `test`
//! lines are left for evaluation and never touched here.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: no images found (looked for .png .jpg .jpeg .bmp .pgm .ppm .tif)")]
    Empty { path: PathBuf },
    #[error("{path}: {count} image(s) is too few: need at least 4 (train and held-out normals)")]
    TooFew { path: PathBuf, count: usize },
    #[error("{path}:{line}: {message}")]
    Split { path: PathBuf, line: usize, message: String },
    #[error("{path}: the split has no `{role}` images")]
    NoRole { path: PathBuf, role: &'static str },
}

/// Image paths by role.
#[derive(Debug, Clone)]
pub struct DataSet {
    pub train: Vec<PathBuf>,
    /// Held-out normal images: checkpoint choice and threshold calibration.
    pub val: Vec<PathBuf>,
}

/// All images under `dir` (recursively), sorted; the same listing the `dir` source replays.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    crate::source::dir::list_images(dir).map_err(|source| DataError::Io { path: dir.to_owned(), source })
}

/// Train/val from folders of good images (e.g. the line's own, and the frames a person
/// labelled good in the review queue's export), taken in order, each sorted.
pub fn from_folders(dirs: &[PathBuf], val_fraction: f64) -> Result<DataSet, DataError> {
    let mut all = Vec::new();
    for dir in dirs {
        all.extend(list_images(dir)?);
    }
    let named = dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ");
    if all.is_empty() {
        return Err(DataError::Empty { path: named.into() });
    }
    if all.len() < 4 {
        return Err(DataError::TooFew { path: named.into(), count: all.len() });
    }
    let every = ((1.0 / val_fraction.clamp(0.01, 0.5)).round() as usize).max(2);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, p) in all.into_iter().enumerate() {
        if i % every == every - 1 { val.push(p) } else { train.push(p) }
    }
    Ok(DataSet { train, val })
}

/// Train/val from a split file (`test` lines are left for evaluation).
pub fn from_split(file: &Path) -> Result<DataSet, DataError> {
    let entries = crate::dataset::read_split(file).map_err(|e| match e {
        crate::dataset::DatasetError::Split { path, line, message } => DataError::Split { path, line, message },
        crate::dataset::DatasetError::Io { path, source } => DataError::Io { path, source },
        other => unreachable!("reading a split file decodes no image: {other}"),
    })?;
    let role = |r: &str| entries.iter().filter(|e| e.role == r).map(|e| e.path.clone()).collect::<Vec<_>>();
    let (train, val) = (role("train"), role("val"));
    if train.is_empty() {
        return Err(DataError::NoRole { path: file.to_owned(), role: "train" });
    }
    if val.is_empty() {
        return Err(DataError::NoRole { path: file.to_owned(), role: "val" });
    }
    Ok(DataSet { train, val })
}
