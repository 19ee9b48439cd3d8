//! The review queue: the frames a person should look at, kept on disk so a line's model can
//! get better after day one.
//!
//! Which frames: every defect, and every frame whose score lies in a band around the image
//! threshold (`[review] band`, fractions of the threshold): the ones the model was least sure
//! of. Each is one folder `<dir>/<event id>/` holding the frame as dskd saw it (`frame.png`,
//! lossless, so it can go back into training), its anomaly map (`map.f32`, little-endian
//! `[height, width]`), an overlay a person can read (`overlay.jpg`) and `item.json` (the event
//! id, score, threshold, verdict, why it was kept). A folder is written under a hidden name
//! and renamed into place, so a reader never sees half an item and a crash leaves only a
//! hidden folder, removed at the next start.
//!
//! Bounds: at most `max_items` items and `max_bytes` bytes; beyond either the oldest go first
//! (UUIDv7 names sort by time, also across restarts), counted. A failed write costs that
//! item, never the event.
//!
//! `dskd review export` turns the queue into a folder a person labels (`good/`, `defect/`);
//! `dskd-train --data GOOD --data EXPORT/good` takes the good ones back as normal images.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};

use image::DynamicImage;
use serde::{Deserialize, Serialize};

use crate::detector::anomaly_map::Map;

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Item { path: PathBuf, message: String },
    #[error("encoding {what}: {message}")]
    Encode { what: &'static str, message: String },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ReviewError + '_ {
    move |source| ReviewError::Io { path: path.to_path_buf(), source }
}

/// Why a frame was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Judged a defect.
    Defect,
    /// Judged normal, but its score lies in the band below the threshold.
    NearThreshold,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::Defect => "defect",
            Reason::NearThreshold => "near_threshold",
        }
    }
}

/// Which frames the queue keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rule {
    /// `[low, high]` as fractions of the image threshold: a frame scoring in it is kept.
    pub band: [f32; 2],
    /// Keep every defect too (also those scoring above the band).
    pub defects: bool,
}

impl Rule {
    /// Why a frame with this score and verdict is kept, or None.
    pub fn reason(&self, score: f32, threshold: f32, defect: bool) -> Option<Reason> {
        let in_band = score >= self.band[0] * threshold && score <= self.band[1] * threshold;
        match (defect, in_band) {
            (true, _) if self.defects => Some(Reason::Defect),
            (true, true) => Some(Reason::Defect),
            (false, true) => Some(Reason::NearThreshold),
            _ => None,
        }
    }
}

/// What `item.json` holds: the event the frame belongs to and why it was kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// The event id (the `id` of the frame's result on MQTT).
    pub id: String,
    pub timestamp: String,
    pub camera: String,
    pub origin: String,
    pub frame_seq: u64,
    pub verdict: String,
    pub reason: Reason,
    pub score: f32,
    pub threshold: f32,
    /// `name version` of the bundle that judged it.
    pub model: String,
    /// The map's size (`map.f32` holds `map_height * map_width` values).
    pub map_width: usize,
    pub map_height: usize,
}

/// The files of one item, relative to its folder.
pub const FRAME: &str = "frame.png";
pub const MAP: &str = "map.f32";
pub const OVERLAY: &str = "overlay.jpg";
pub const ITEM: &str = "item.json";

/// What one save did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saved {
    pub bytes: u64,
    /// Older items deleted to stay in bounds.
    pub evicted: usize,
}

/// The queue on disk, with the sizes of its items (oldest first).
pub struct ReviewStore {
    dir: PathBuf,
    max_items: usize,
    max_bytes: u64,
    items: VecDeque<(String, u64)>,
    total_bytes: u64,
}

impl ReviewStore {
    /// Opens (creates) `dir`, removes half-written items left by a crash and takes stock of
    /// the rest, pruning to the bounds.
    pub fn open(dir: &Path, max_items: usize, max_bytes: u64) -> Result<Self, ReviewError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
            let entry = entry.map_err(io_error(dir))?;
            let (path, name) = (entry.path(), entry.file_name().to_string_lossy().into_owned());
            if name.starts_with('.') && name.ends_with(".tmp") {
                let _ = std::fs::remove_dir_all(&path);
            } else if path.join(ITEM).is_file() {
                found.push((name, folder_bytes(&path)?));
            }
        }
        found.sort();
        let total_bytes = found.iter().map(|(_, n)| n).sum();
        let mut store = Self { dir: dir.to_path_buf(), max_items, max_bytes, items: found.into(), total_bytes };
        store.prune();
        Ok(store)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Writes one item whole (hidden folder, then renamed into place), then prunes.
    /// `overlay_jpeg` is the overlay already encoded (the image store's, when it made one).
    pub fn save(
        &mut self,
        item: &Item,
        frame: &DynamicImage,
        map: &Map,
        overlay_jpeg: &[u8],
    ) -> Result<Saved, ReviewError> {
        if item.id.is_empty() || item.id.contains(['/', '\\', '.']) {
            let message = "an event id names the item's folder: no '/', '\\' or '.'".into();
            return Err(ReviewError::Item { path: self.dir.join(&item.id), message });
        }
        let (tmp, path) = (self.dir.join(format!(".{}.tmp", item.id)), self.dir.join(&item.id));
        let written = write_item(&tmp, item, frame, map, overlay_jpeg).and_then(|bytes| {
            std::fs::rename(&tmp, &path).map_err(io_error(&path))?;
            Ok(bytes)
        });
        let bytes = match written {
            Ok(b) => b,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        self.items.push_back((item.id.clone(), bytes));
        self.total_bytes += bytes;
        Ok(Saved { bytes, evicted: self.prune() })
    }

    /// Deletes the oldest items until both bounds hold; returns how many went.
    fn prune(&mut self) -> usize {
        let mut evicted = 0;
        while self.items.len() > self.max_items || (self.total_bytes > self.max_bytes && !self.items.is_empty()) {
            let Some((id, n)) = self.items.pop_front() else { break };
            let path = self.dir.join(&id);
            if let Err(e) = std::fs::remove_dir_all(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "could not delete an old review item");
            }
            self.total_bytes -= n;
            evicted += 1;
        }
        evicted
    }
}

fn write_item(dir: &Path, item: &Item, frame: &DynamicImage, map: &Map, jpeg: &[u8]) -> Result<u64, ReviewError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let mut png = Vec::new();
    frame
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| ReviewError::Encode { what: "the frame as PNG", message: e.to_string() })?;
    let raw: Vec<u8> = map.data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let json = serde_json::to_vec_pretty(item).expect("review items serialise");
    let mut bytes = 0;
    // item.json last: a folder without it is not an item.
    for (name, data) in [(FRAME, png.as_slice()), (MAP, &raw), (OVERLAY, jpeg), (ITEM, &json)] {
        let path = dir.join(name);
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(data).and_then(|()| f.sync_data()))
            .map_err(io_error(&path))?;
        bytes += data.len() as u64;
    }
    Ok(bytes)
}

fn folder_bytes(dir: &Path) -> Result<u64, ReviewError> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        n += entry.and_then(|e| e.metadata()).map_err(io_error(dir))?.len();
    }
    Ok(n)
}

/// Items listed when no limit is asked for (HTTP `/review`, `cmd/review`, `dskd review list`).
pub const LIST_LIMIT: usize = 100;

/// [`list`] on a blocking thread, for the daemon's async handlers; the error as text.
pub async fn list_blocking(dir: PathBuf, limit: usize) -> Result<Vec<Item>, String> {
    match tokio::task::spawn_blocking(move || list(&dir, limit)).await {
        Ok(listed) => listed.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// The items in `dir`, newest first (at most `limit`). A folder whose `item.json` does not
/// parse is skipped with a warning: one bad item must not hide the rest.
pub fn list(dir: &Path, limit: usize) -> Result<Vec<Item>, ReviewError> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(io_error(dir))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && dir.join(n).join(ITEM).is_file())
        .collect();
    names.sort_unstable_by(|a, b| b.cmp(a));
    let mut items = Vec::new();
    for name in names.into_iter().take(limit) {
        match read_item(&dir.join(&name)) {
            Ok(item) => items.push(item),
            Err(e) => tracing::warn!(error = %e, "review item skipped"),
        }
    }
    Ok(items)
}

fn read_item(folder: &Path) -> Result<Item, ReviewError> {
    let path = folder.join(ITEM);
    let text = std::fs::read(&path).map_err(io_error(&path))?;
    serde_json::from_slice(&text).map_err(|e| ReviewError::Item { path, message: e.to_string() })
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exported {
    /// Frames newly copied to `unlabelled/`.
    pub new: usize,
    /// Items already exported before (in `unlabelled/`, `good/` or `defect/`): left alone.
    pub already: usize,
}

const EXPORT_README: &str = "\
Frames dskd kept for review: every defect, and the normal verdicts that scored close to the
threshold. Label them by moving each image out of unlabelled/:

  good/     the part is fine (a false alarm, or a close call that was right)
  defect/   the part is defective

overlays/ shows what dskd saw (its anomaly map over the frame); index.csv lists every frame
with its score, threshold and verdict. Exporting again adds new frames to unlabelled/ and
never touches good/ or defect/.

Retrain with the good ones as extra normal images:

  dskd-train --data <your good images> --data <this folder>/good --out <new bundle>
";

/// Writes the queue's items as a folder a person labels: `unlabelled/<id>.png`,
/// `overlays/<id>.jpg`, `index.csv`, empty `good/` and `defect/`, and a README. Items
/// exported before (wherever they were moved to) are left alone.
pub fn export(dir: &Path, out: &Path) -> Result<Exported, ReviewError> {
    for sub in ["unlabelled", "overlays", "good", "defect"] {
        let p = out.join(sub);
        std::fs::create_dir_all(&p).map_err(io_error(&p))?;
    }
    let items = list(dir, usize::MAX)?;
    let index = out.join("index.csv");
    let mut csv = String::from("id,timestamp,camera,origin,verdict,reason,score,threshold,model\n");
    let mut done = Exported { new: 0, already: 0 };
    for item in items.iter().rev() {
        let png = format!("{}.png", item.id);
        let seen = ["unlabelled", "good", "defect"].iter().any(|s| out.join(s).join(&png).exists());
        if seen {
            done.already += 1;
        } else {
            let copy =
                |from: &str, to: PathBuf| std::fs::copy(dir.join(&item.id).join(from), &to).map_err(io_error(&to));
            copy(OVERLAY, out.join("overlays").join(format!("{}.jpg", item.id)))?;
            copy(FRAME, out.join("unlabelled").join(&png))?;
            done.new += 1;
        }
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{},{}\n",
            item.id,
            item.timestamp,
            csv_field(&item.camera),
            csv_field(&item.origin),
            item.verdict,
            item.reason.name(),
            item.score,
            item.threshold,
            csv_field(&item.model)
        ));
    }
    // The index lists what the queue holds now and what earlier exports listed.
    let earlier = std::fs::read_to_string(&index).unwrap_or_default();
    for line in earlier.lines().skip(1) {
        let id = line.split(',').next().unwrap_or_default();
        if !id.is_empty() && !items.iter().any(|i| i.id == id) {
            csv.push_str(line);
            csv.push('\n');
        }
    }
    std::fs::write(&index, csv).map_err(io_error(&index))?;
    let readme = out.join("README.txt");
    std::fs::write(&readme, EXPORT_README).map_err(io_error(&readme))?;
    Ok(done)
}

/// A CSV field, quoted when it holds a comma, quote or line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, score: f32) -> Item {
        Item {
            id: id.into(),
            timestamp: "2026-11-29T00:00:00Z".into(),
            camera: "cam0".into(),
            origin: "synthetic:1".into(),
            frame_seq: 1,
            verdict: "ok".into(),
            reason: Reason::NearThreshold,
            score,
            threshold: 1.0,
            model: "demo 1".into(),
            map_width: 4,
            map_height: 2,
        }
    }

    fn parts() -> (DynamicImage, Map, Vec<u8>) {
        let frame =
            DynamicImage::ImageRgb8(image::RgbImage::from_fn(8, 4, |x, y| image::Rgb([x as u8 * 30, y as u8 * 60, 7])));
        let map = Map { data: (0..8).map(|v| v as f32 * 0.25).collect(), height: 2, width: 4 };
        let overlay = crate::overlay::jpeg(&frame.to_rgb8(), 85).unwrap();
        (frame, map, overlay)
    }

    #[test]
    fn the_band_and_defects_decide_what_is_kept() {
        let rule = Rule { band: [0.8, 1.2], defects: true };
        assert_eq!(rule.reason(0.5, 1.0, false), None);
        assert_eq!(rule.reason(0.85, 1.0, false), Some(Reason::NearThreshold));
        assert_eq!(rule.reason(1.1, 1.0, true), Some(Reason::Defect));
        assert_eq!(rule.reason(5.0, 1.0, true), Some(Reason::Defect));
        let band_only = Rule { defects: false, ..rule };
        assert_eq!(band_only.reason(5.0, 1.0, true), None);
        assert_eq!(band_only.reason(1.1, 1.0, true), Some(Reason::Defect));
    }

    #[test]
    fn items_are_written_whole_listed_newest_first_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let (frame, map, overlay) = parts();
        let mut store = ReviewStore::open(dir.path(), 3, u64::MAX).unwrap();
        for (i, id) in ["0001", "0002", "0003", "0004"].iter().enumerate() {
            let saved = store.save(&item(id, 0.9), &frame, &map, &overlay).unwrap();
            assert_eq!(saved.evicted, usize::from(i == 3), "item {id}");
        }
        let ids: Vec<String> = list(dir.path(), 10).unwrap().into_iter().map(|i| i.id).collect();
        assert_eq!(ids, ["0004", "0003", "0002"]);
        // Frame and map come back exactly.
        let back = image::open(dir.path().join("0004").join(FRAME)).unwrap();
        assert_eq!(back.to_rgb8(), frame.to_rgb8());
        let raw = std::fs::read(dir.path().join("0004").join(MAP)).unwrap();
        let values: Vec<f32> = raw.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        assert_eq!(values, map.data);

        // Reopened: the same items; a byte budget of two items' worth keeps two.
        let per_item = store.total_bytes() / 3;
        drop(store);
        std::fs::create_dir(dir.path().join(".0005.tmp")).unwrap();
        let store = ReviewStore::open(dir.path(), 10, per_item * 2 + per_item / 2).unwrap();
        assert_eq!(store.len(), 2);
        assert!(!dir.path().join(".0005.tmp").exists(), "a half-written item is removed at start");
        assert!(!dir.path().join("0002").exists());
    }

    #[test]
    fn a_bad_id_or_a_failed_write_costs_the_item_only() {
        let dir = tempfile::tempdir().unwrap();
        let (frame, map, overlay) = parts();
        let mut store = ReviewStore::open(dir.path(), 10, u64::MAX).unwrap();
        assert!(store.save(&item("../x", 0.9), &frame, &map, &overlay).is_err());
        std::fs::write(dir.path().join("0007"), b"in the way").unwrap();
        assert!(store.save(&item("0007", 0.9), &frame, &map, &overlay).is_err());
        assert!(store.is_empty());
        store.save(&item("0008", 0.9), &frame, &map, &overlay).unwrap();
        assert_eq!(list(dir.path(), 10).unwrap().len(), 1);
        assert!(!dir.path().join(".0007.tmp").exists());
    }

    #[test]
    fn export_makes_a_folder_to_label_and_never_touches_labels() {
        let (queue, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (frame, map, overlay) = parts();
        let mut store = ReviewStore::open(queue.path(), 10, u64::MAX).unwrap();
        for id in ["0001", "0002"] {
            store.save(&item(id, 0.9), &frame, &map, &overlay).unwrap();
        }
        assert_eq!(export(queue.path(), out.path()).unwrap(), Exported { new: 2, already: 0 });
        // A person labels one as good; a new frame arrives; export again.
        std::fs::rename(out.path().join("unlabelled/0001.png"), out.path().join("good/0001.png")).unwrap();
        store.save(&item("0003", 0.95), &frame, &map, &overlay).unwrap();
        assert_eq!(export(queue.path(), out.path()).unwrap(), Exported { new: 1, already: 2 });
        assert!(out.path().join("good/0001.png").exists() && !out.path().join("unlabelled/0001.png").exists());
        assert!(out.path().join("overlays/0003.jpg").exists() && out.path().join("README.txt").exists());
        let index = std::fs::read_to_string(out.path().join("index.csv")).unwrap();
        assert_eq!(index.lines().count(), 4, "{index}");
        assert!(index.contains("0003,") && index.contains("near_threshold"));
    }
}
