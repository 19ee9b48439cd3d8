//! The image store: overlay JPEGs of defective frames on local disk, named `<event id>.jpg`,
//! so events carry a path instead of inlined pixels.
//!
//! Two bounds keep it safe on an edge box: a rate limit (a burst of defects writes at most
//! `max_per_minute` images; the events still go out, without an image) and a disk budget (the
//! oldest images are deleted once the total passes `max_bytes`; UUIDv7 names sort by time, so
//! name order is age order, also across restarts). A failed write (full disk, bad permissions)
//! costs the image, never the event.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::RgbImage;

#[derive(Debug, thiserror::Error)]
pub enum ImageStoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("encoding JPEG: {0}")]
    Encode(String),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ImageStoreError + '_ {
    move |source| ImageStoreError::Io { path: path.to_path_buf(), source }
}

/// One stored image: where it is, and its bytes (for `<prefix>/events/<id>/image`).
#[derive(Debug)]
pub struct Saved {
    pub path: PathBuf,
    pub jpeg: Vec<u8>,
}

pub struct ImageStore {
    dir: PathBuf,
    max_bytes: u64,
    max_per_minute: usize,
    quality: u8,
    /// Stored images, oldest first, with their sizes.
    files: VecDeque<(PathBuf, u64)>,
    total_bytes: u64,
    /// When each image of the last minute was written.
    recent: VecDeque<Instant>,
}

impl ImageStore {
    /// Opens (creates) `dir` and takes stock of the images already there, pruning to the budget.
    pub fn open(dir: &Path, max_bytes: u64, max_per_minute: usize, quality: u8) -> Result<Self, ImageStoreError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        // Events carry the path: make it absolute, so it means the same to any reader.
        let dir = &std::fs::canonicalize(dir).map_err(io_error(dir))?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
            let entry = entry.map_err(io_error(dir))?;
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "jpg") {
                found.push((path, entry.metadata().map_err(io_error(dir))?.len()));
            }
        }
        found.sort();
        let total_bytes = found.iter().map(|(_, n)| n).sum();
        let mut store = Self {
            dir: dir.to_path_buf(),
            max_bytes,
            max_per_minute,
            quality: quality.clamp(1, 100),
            files: found.into(),
            total_bytes,
            recent: VecDeque::new(),
        };
        store.prune();
        Ok(store)
    }

    /// Whether the rate limit lets one more image be written at `now` (and counts it if so).
    pub fn admit(&mut self, now: Instant) -> bool {
        while self.recent.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60)) {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.max_per_minute {
            return false;
        }
        self.recent.push_back(now);
        true
    }

    /// Writes `img` as `<id>.jpg` (whole or not at all: temporary file, then rename) and
    /// deletes the oldest images beyond the disk budget.
    pub fn save(&mut self, id: &str, img: &RgbImage) -> Result<Saved, ImageStoreError> {
        let jpeg = crate::overlay::jpeg(img, self.quality).map_err(|e| ImageStoreError::Encode(e.to_string()))?;
        let path = self.dir.join(format!("{id}.jpg"));
        let tmp = self.dir.join(format!(".{id}.jpg.tmp"));
        let written = std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(&jpeg).and_then(|()| f.sync_data()))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_error(&path)(e));
        }
        self.files.push_back((path.clone(), jpeg.len() as u64));
        self.total_bytes += jpeg.len() as u64;
        self.prune();
        Ok(Saved { path, jpeg })
    }

    /// Bytes the stored images take.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    fn prune(&mut self) {
        while self.total_bytes > self.max_bytes {
            let Some((old, n)) = self.files.pop_front() else { break };
            if let Err(e) = std::fs::remove_file(&old)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %old.display(), error = %e, "could not delete an old image");
            }
            self.total_bytes -= n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(seed: u32) -> RgbImage {
        // Incompressible enough that every JPEG has a similar, non-trivial size.
        RgbImage::from_fn(64, 64, |x, y| {
            let v = (x * 7919 + y * 104_729 + seed * 31).wrapping_mul(2_654_435_761) >> 24;
            image::Rgb([v as u8, (v >> 1) as u8, (v >> 2) as u8])
        })
    }

    #[test]
    fn at_most_n_per_minute() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ImageStore::open(dir.path(), u64::MAX, 3, 85).unwrap();
        let t0 = Instant::now();
        let admitted: Vec<bool> = (0..5).map(|i| s.admit(t0 + Duration::from_secs(i))).collect();
        assert_eq!(admitted, [true, true, true, false, false]);
        // A minute after the first, one slot is free again.
        assert!(s.admit(t0 + Duration::from_secs(60)));
        assert!(!s.admit(t0 + Duration::from_secs(60)));
    }

    #[test]
    fn disk_budget_deletes_the_oldest_also_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let size = {
            let mut s = ImageStore::open(dir.path(), u64::MAX, 100, 85).unwrap();
            s.save("00-first", &noise(0)).unwrap();
            s.total_bytes()
        };
        let budget = size * 3 + size / 2;
        let mut s = ImageStore::open(dir.path(), budget, 100, 85).unwrap();
        for i in 1..6 {
            let saved = s.save(&format!("{i:02}"), &noise(i)).unwrap();
            assert_eq!(std::fs::read(&saved.path).unwrap(), saved.jpeg);
            assert!(image::open(&saved.path).is_ok(), "{} decodes", saved.path.display());
            assert!(s.total_bytes() <= budget);
        }
        let mut left: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["03.jpg", "04.jpg", "05.jpg"], "the newest kept, the oldest (from before the restart) gone");
        // Reopening with a smaller budget prunes at once.
        let s = ImageStore::open(dir.path(), size + size / 2, 100, 85).unwrap();
        assert!(s.total_bytes() <= size + size / 2);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_write_names_the_path_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ImageStore::open(dir.path(), u64::MAX, 100, 85).unwrap();
        // The directory vanishes under the store (a disk unmounted, a cleanup job).
        std::fs::remove_dir_all(dir.path()).unwrap();
        let e = s.save("gone", &noise(1)).unwrap_err().to_string();
        assert!(e.contains("gone.jpg"), "{e}");
        assert_eq!(s.total_bytes(), 0);
    }
}
