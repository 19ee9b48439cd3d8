//! Labelled test sets for `dskd eval`: MVTec-AD-style folders or split files.
//!
//! - MVTec AD: `test/<type>/*.png` (type `good` is normal) with masks
//!   `ground_truth/<type>/<stem>_mask.png`; a defect type without masks counts at image level
//!   only.
//! - Split file (see [`crate::dataset`]): the `test` lines. An image's type is the first
//!   folder of its path; types that also appear on `train`/`val` lines are normal (those hold
//!   only good images), every other type is a defect. The mask is the same path with `.png`
//!   (for a `.png` image: `<stem>_mask.png`), binarised at 128.

use std::path::{Path, PathBuf};

use crate::dataset::{self, DatasetError};

#[derive(Debug, thiserror::Error)]
pub enum EvalDataError {
    #[error(transparent)]
    Split(#[from] DatasetError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}: no test images (expected test/<type>/*.png, or `test` lines in a split file)")]
    NoTest(PathBuf),
    #[error("{0}: no normal test images, so false alarms and AUROC cannot be measured")]
    NoNormal(PathBuf),
    #[error("{0}: no defective test images, so misses and AUROC cannot be measured")]
    NoDefect(PathBuf),
    #[error("{split}: lists {path}, which does not exist")]
    Missing { split: PathBuf, path: PathBuf },
    #[error(
        "{0}: cannot tell normal from defective test images: the split has no train/val lines \
         (their folders name the normal types)"
    )]
    NoNormalType(PathBuf),
}

/// One test image with its label.
#[derive(Debug, Clone, PartialEq)]
pub struct TestImage {
    pub image: PathBuf,
    pub mask: Option<PathBuf>,
    /// Defect type, or the normal type's name.
    pub kind: String,
    pub defective: bool,
}

/// The test images of a dataset folder (MVTec) or split file.
pub fn load(dataset: &Path) -> Result<Vec<TestImage>, EvalDataError> {
    let images = if dataset.is_file() { from_split(dataset)? } else { from_mvtec(dataset)? };
    if images.is_empty() {
        return Err(EvalDataError::NoTest(dataset.to_owned()));
    }
    if !images.iter().any(|t| !t.defective) {
        return Err(EvalDataError::NoNormal(dataset.to_owned()));
    }
    if !images.iter().any(|t| t.defective) {
        return Err(EvalDataError::NoDefect(dataset.to_owned()));
    }
    Ok(images)
}

fn first_folder(rel: &str) -> String {
    Path::new(rel).components().next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default()
}

fn mask_beside(image: &Path) -> PathBuf {
    if image.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")) {
        let stem = image.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        image.with_file_name(format!("{stem}_mask.png"))
    } else {
        image.with_extension("png")
    }
}

fn from_split(file: &Path) -> Result<Vec<TestImage>, EvalDataError> {
    let entries = dataset::read_split(file)?;
    let normal: Vec<String> = entries.iter().filter(|e| e.role != "test").map(|e| first_folder(&e.rel)).collect();
    if normal.is_empty() {
        return Err(EvalDataError::NoNormalType(file.to_owned()));
    }
    let mut out = Vec::new();
    for e in entries.iter().filter(|e| e.role == "test") {
        if !e.path.is_file() {
            return Err(EvalDataError::Missing { split: file.to_owned(), path: e.path.clone() });
        }
        let kind = first_folder(&e.rel);
        let mask = Some(mask_beside(&e.path)).filter(|m| m.is_file());
        out.push(TestImage { image: e.path.clone(), mask, defective: !normal.contains(&kind), kind });
    }
    Ok(out)
}

fn from_mvtec(dir: &Path) -> Result<Vec<TestImage>, EvalDataError> {
    let test = dir.join("test");
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| EvalDataError::Io { path, source }
    };
    if !test.is_dir() {
        return Err(EvalDataError::NoTest(dir.to_owned()));
    }
    let mut kinds: Vec<PathBuf> = std::fs::read_dir(&test)
        .map_err(io(&test))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    kinds.sort();
    let mut out = Vec::new();
    for kind_dir in kinds {
        let kind = kind_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let images = crate::source::dir::list_images(&kind_dir).map_err(io(&kind_dir))?;
        for image in images {
            let stem = image.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let mask = dir.join("ground_truth").join(&kind).join(format!("{stem}_mask.png"));
            out.push(TestImage {
                image,
                mask: mask.is_file().then_some(mask),
                defective: kind != "good",
                kind: kind.clone(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn split_types_come_from_folders_and_train_lines_name_the_normal_ones() {
        let d = tempfile::tempdir().unwrap();
        for f in ["Free/a.jpg", "Free/b.jpg", "Free/b.png", "Crack/c.jpg", "Crack/c.png", "Fray/d.jpg"] {
            touch(&d.path().join(f));
        }
        let split = d.path().join("split.tsv");
        std::fs::write(&split, "train\tFree/a.jpg\ntest\tFree/b.jpg\ntest\tCrack/c.jpg\ntest\tFray/d.jpg\n").unwrap();
        let t = load(&split).unwrap();
        assert_eq!(t.len(), 3);
        assert!(!t[0].defective && t[0].kind == "Free" && t[0].mask.is_some());
        assert!(t[1].defective && t[1].kind == "Crack" && t[1].mask == Some(d.path().join("Crack/c.png")));
        assert!(t[2].defective && t[2].mask.is_none(), "no mask: image level only");
    }

    #[test]
    fn a_split_naming_a_missing_file_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        touch(&d.path().join("Free/a.jpg"));
        let split = d.path().join("split.tsv");
        std::fs::write(&split, "train\tFree/a.jpg\ntest\tFree/gone.jpg\n").unwrap();
        let msg = load(&split).unwrap_err().to_string();
        assert!(msg.contains("split.tsv") && msg.contains("Free/gone.jpg"), "{msg}");
    }

    #[test]
    fn mvtec_folders_without_test_images_are_an_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("train/good")).unwrap();
        let msg = load(d.path()).unwrap_err().to_string();
        assert!(msg.contains("no test images"), "{msg}");
        std::fs::create_dir_all(d.path().join("test/good")).unwrap();
        assert!(load(d.path()).unwrap_err().to_string().contains("no test images"));
    }
}
