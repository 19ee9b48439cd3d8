//! The model bundle: a directory with `bundle.toml` and the files it names.
//!
//! ```text
//! bundle/
//!   bundle.toml           manifest (this module's `Manifest`), sha256 of every other file
//!   teacher.onnx          image [1,3,H,W] -> f1, f2, f3 (the teacher's strides, e.g. 8, 16, 32)
//!   student_e.onnx        image -> f1, f2, f3          (encoder-like student Se)
//!   student_d.onnx        f1, f2, f3 (Se's) -> f1, f2, f3 (DF embedding + decoder Sd)
//!   *.int8.onnx           the same graphs with int8 QDQ weights and activations
//!   golden/NN.png         golden images
//!   golden/NN.map.f32     the trainer's anomaly map for each, little-endian f32 [H*W]
//!   memory_bank.safetensors  optional: normal teacher features for the hybrid map
//!   teacher_half.onnx, memory_bank_half.safetensors
//!                         optional: the same at half the input's size (2x2 averaged in the graph)
//!   image_gaussian.safetensors
//!                         optional: the normal images' teacher statistics (mean, precision)
//! ```
//!
//! The trainer does the heavy work; the daemon only hashes, loads and checks (`dskd verify`).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::detector::anomaly_map::{Map, MapSettings};
use crate::preprocess::InputSpec;

/// The manifest format this build reads and writes.
pub const FORMAT: u32 = 1;
/// The manifest's file name inside a bundle directory.
pub const MANIFEST: &str = "bundle.toml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub bundle: Info,
    pub input: InputSpec,
    pub teacher: Teacher,
    pub graphs: Graphs,
    pub map: MapSettings,
    /// The hybrid map's memory bank of normal teacher features, when the bundle has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bank: Option<MemoryBankSpec>,
    /// The image score's second term: the distance of the image's teacher statistics to the
    /// normal images' Gaussian, when the bundle has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_gaussian: Option<ImageGaussianSpec>,
    pub calibration: Calibration,
    pub golden: Golden,
    /// sha256 (hex) of every file in the bundle except the manifest, by relative path.
    pub files: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Info {
    pub format: u32,
    pub name: String,
    pub version: String,
    /// RFC 3339 time of writing.
    pub created: String,
    pub trainer_version: String,
    /// "dskd" (both students) or "st" (the vanilla S-T baseline: Se only).
    pub method: String,
    /// Training summary: what was trained on and how.
    pub training: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Teacher {
    pub arch: String,
    pub taps: Vec<String>,
    pub channels: Vec<usize>,
    pub strides: Vec<usize>,
    pub weights_sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Graphs {
    /// Input tensor name of the teacher and Se graphs.
    pub input: String,
    /// Level tensor names: outputs of every graph, and inputs of `student_d`.
    pub levels: Vec<String>,
    pub f32: GraphSet,
    pub int8: Option<GraphSet>,
    /// The teacher on the input averaged 2x2 (`image [1,3,H,W] -> f1..f3` at half the
    /// teacher's grids), for the memory bank's half-scale map; f32, used at either precision
    /// (the bank's features are f32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_half: Option<String>,
}

/// File names of one precision's graphs; `student_d` is absent for the S-T baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphSet {
    pub teacher: String,
    pub student_e: String,
    pub student_d: Option<String>,
}

impl GraphSet {
    /// How many students the map compares with the teacher: 2 (DSKD) or 1 (S-T).
    pub fn students(&self) -> usize {
        if self.student_d.is_some() { 2 } else { 1 }
    }
}

/// A memory bank of normal teacher features (`detector::memory_bank`). The bundle's map is
/// then `students / students_divisor + knn / knn_divisor`: each divisor is its map's mean
/// image score on the held-out normals, so both weigh alike whatever their units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryBankSpec {
    /// safetensors file with one f32 tensor `bank` of `[rows, dims]`.
    pub file: String,
    /// Teacher levels (1-based) whose features are embedded.
    pub levels: Vec<usize>,
    pub rows: usize,
    pub dims: usize,
    pub students_divisor: f32,
    pub knn_divisor: f32,
    /// A second bank scoring the frame at half size (absent: the frame's size only); its map
    /// is added to the other two, divided by its own divisor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half: Option<HalfScaleBank>,
}

/// The image Gaussian (`detector::image_gaussian`): the image score is then the map's score
/// plus `scale · (distance − offset)`, `distance` the Mahalanobis distance of the image's
/// teacher statistics (every level's per-channel mean and standard deviation) to the
/// training images'; `offset` and `scale` bring it to the map score's mean and spread on the
/// held-out normals. Each precision has its own fit, from its own teacher graph's features
/// (int8 features are offset from f32's by more than the Gaussian's normal spread); an int8
/// set that keeps the f32 teacher (every export since the teacher stays f32) names f32's file
/// and has only its own `offset` and `scale`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageGaussianSpec {
    /// Which per-channel statistics (absent: `mean_std`, the bundles before the choice).
    #[serde(default, skip_serializing_if = "GaussianStatistics::is_default")]
    pub statistics: GaussianStatistics,
    /// The teacher's channels summed over its levels, times the statistics per channel.
    pub dims: usize,
    pub f32: GaussianFit,
    /// Present when the bundle keeps int8 graphs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int8: Option<GaussianFit>,
}

/// The statistics of each teacher channel over positions that the image Gaussian models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum GaussianStatistics {
    /// Mean and standard deviation (Rippel et al.).
    #[default]
    MeanStd,
    /// Also the maximum: a local extreme moves it where it barely moves the mean (docs/RESULTS.md §0i).
    MeanStdMax,
}

impl GaussianStatistics {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Values per channel.
    pub fn per_channel(self) -> usize {
        match self {
            Self::MeanStd => 2,
            Self::MeanStdMax => 3,
        }
    }
}

/// One precision's image Gaussian.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GaussianFit {
    /// safetensors file with f32 tensors `mean` `[dims]` and `precision` `[dims, dims]`.
    pub file: String,
    pub offset: f32,
    pub scale: f32,
}

/// The half-scale bank: entries from the teacher on the input averaged 2x2 (the graph
/// `graphs.teacher_half`), embedded at the same levels as the full-size bank.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HalfScaleBank {
    /// safetensors file with one f32 tensor `bank` of `[rows, dims]`.
    pub file: String,
    pub rows: usize,
    pub dims: usize,
    pub knn_divisor: f32,
    /// How its map joins the full-size map (absent in older bundles: `sum`).
    #[serde(default)]
    pub fusion: ScaleFusion,
    /// `max` only: added to the divided half-scale map, so that on the held-out normals its
    /// image scores have the full-size map's mean (and, by the divisor, its spread).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: f32,
}

fn is_zero(v: &f32) -> bool {
    *v == 0.0
}

/// How the half-scale bank's map joins the full-size hybrid map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ScaleFusion {
    /// Added, divided by the spread of its held-out normals' scores, like the other two maps.
    #[default]
    Sum,
    /// The larger of the two at each pixel, the half-scale map brought to the full-size map's
    /// mean and spread on the held-out normals: a defect only one scale sees keeps its whole
    /// signal instead of sharing the sum with the other scale's noise.
    Max,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// Image score at or above which a frame is a defect.
    pub threshold: f32,
    /// The false-alarm rate on normal images the threshold was set for.
    pub target_false_alarm_rate: f64,
    /// Map value at or above which a pixel belongs to a defect region.
    pub pixel_threshold: f32,
    /// The same two thresholds for the int8 graphs, calibrated on the same normals with them.
    pub int8_threshold: Option<f32>,
    pub int8_pixel_threshold: Option<f32>,
    /// How the tail was fitted ("gumbel": method of moments on held-out normal scores).
    pub fit: String,
    pub gumbel_mu: f64,
    pub gumbel_beta: f64,
    /// Statistics of the held-out normal scores the fit came from.
    pub normals: usize,
    pub normal_mean: f64,
    pub normal_std: f64,
    pub normal_max: f64,
    /// Fraction of the held-out normals at or above the threshold (in-sample check).
    pub normal_flagged: f64,
    /// The held-out normals' scores themselves (f32 graphs, then int8): the reference of the
    /// daemon's drift alarm. Empty in bundles made before they were stored (no drift alarm).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub normal_scores: Vec<f32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub int8_normal_scores: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Golden {
    /// Largest allowed |daemon map - trainer map| for the f32 graphs, relative to the
    /// golden map's peak.
    pub tolerance_f32: f32,
    /// Same bound for the int8 graphs, compared against the f32 golden maps.
    pub tolerance_int8: f32,
    pub samples: Vec<GoldenSample>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenSample {
    pub image: String,
    pub map: String,
    pub score: f32,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a valid bundle manifest: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("{path}: manifest format {found} is not supported (this build reads format {FORMAT})")]
    Format { path: PathBuf, found: u32 },
    #[error("{path}: named by the manifest but not listed in its [files] hashes")]
    Unlisted { path: PathBuf },
    #[error("{path}: sha256 mismatch: manifest says {expected}, file has {actual}")]
    Hash { path: PathBuf, expected: String, actual: String },
    #[error("{path}: golden map has {found} values, expected {expected} ({width}x{height})")]
    GoldenSize { path: PathBuf, found: usize, expected: usize, width: u32, height: u32 },
}

/// A bundle whose manifest parsed and whose files all match their hashes.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Bundle {
    /// Reads the manifest and checks the sha256 of every file it lists.
    pub fn open(dir: &Path) -> Result<Self, BundleError> {
        let manifest = read_manifest(dir)?;
        let bundle = Self { dir: dir.to_owned(), manifest };
        bundle.check_files()?;
        Ok(bundle)
    }

    /// Absolute path of a file named relative to the bundle.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn check_files(&self) -> Result<(), BundleError> {
        for name in self.referenced_files() {
            if !self.manifest.files.contains_key(&name) {
                return Err(BundleError::Unlisted { path: self.path(&name) });
            }
        }
        for (name, expected) in &self.manifest.files {
            let path = self.path(name);
            let actual = sha256_file(&path)?;
            if &actual != expected {
                return Err(BundleError::Hash { path, expected: expected.clone(), actual });
            }
        }
        Ok(())
    }

    /// Every file the manifest points at (graphs and golden samples).
    pub fn referenced_files(&self) -> Vec<String> {
        let m = &self.manifest;
        let mut names = Vec::new();
        for set in std::iter::once(&m.graphs.f32).chain(m.graphs.int8.as_ref()) {
            names.push(set.teacher.clone());
            names.push(set.student_e.clone());
            names.extend(set.student_d.clone());
        }
        for s in &m.golden.samples {
            names.push(s.image.clone());
            names.push(s.map.clone());
        }
        if let Some(b) = &m.memory_bank {
            names.push(b.file.clone());
            names.extend(b.half.as_ref().map(|h| h.file.clone()));
        }
        names.extend(m.graphs.teacher_half.clone());
        if let Some(g) = &m.image_gaussian {
            names.extend(std::iter::once(&g.f32).chain(g.int8.as_ref()).map(|f| f.file.clone()));
        }
        names
    }

    /// Reads a golden map (`[height, width]` of the input's canvas: the input size untiled).
    pub fn golden_map(&self, sample: &GoldenSample) -> Result<Map, BundleError> {
        let path = self.path(&sample.map);
        let bytes = std::fs::read(&path).map_err(|source| BundleError::Io { path: path.clone(), source })?;
        let (w, h) = self.manifest.input.canvas();
        let expected = (w * h) as usize;
        if bytes.len() != expected * 4 {
            return Err(BundleError::GoldenSize { path, found: bytes.len() / 4, expected, width: w, height: h });
        }
        let data = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        Ok(Map { data, height: h as usize, width: w as usize })
    }
}

/// Parses `dir/bundle.toml` without checking files.
pub fn read_manifest(dir: &Path) -> Result<Manifest, BundleError> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|source| BundleError::Io { path: path.clone(), source })?;
    parse_manifest(path, &text)
}

/// Parses and checks a manifest's text (`path` names it in errors).
pub fn parse_manifest(path: PathBuf, text: &str) -> Result<Manifest, BundleError> {
    let manifest: Manifest =
        toml::from_str(text).map_err(|e| BundleError::Manifest { path: path.clone(), message: e.to_string() })?;
    if manifest.bundle.format != FORMAT {
        return Err(BundleError::Format { path, found: manifest.bundle.format });
    }
    manifest.input.validate().map_err(|e| BundleError::Manifest { path: path.clone(), message: e.to_string() })?;
    let levels = manifest.map.check_levels(manifest.teacher.channels.len());
    levels.map_err(|e| BundleError::Manifest { path: path.clone(), message: format!("[map] levels {e}") })?;
    let weights = manifest.map.check_weights(manifest.teacher.channels.len(), manifest.graphs.f32.students());
    weights.map_err(|e| BundleError::Manifest { path, message: format!("[map] weights: {e}") })?;
    Ok(manifest)
}

/// Hashes every file under `dir` (but the manifest) into `manifest.files` and writes it.
pub fn write_manifest(dir: &Path, manifest: &mut Manifest) -> Result<(), BundleError> {
    manifest.files.clear();
    let bundle = Bundle { dir: dir.to_owned(), manifest: manifest.clone() };
    for name in bundle.referenced_files() {
        let hash = sha256_file(&dir.join(&name))?;
        manifest.files.insert(name, hash);
    }
    let path = dir.join(MANIFEST);
    let text = toml::to_string_pretty(manifest)
        .map_err(|e| BundleError::Manifest { path: path.clone(), message: e.to_string() })?;
    std::fs::write(&path, text).map_err(|source| BundleError::Io { path, source })
}

/// Writes a map as little-endian f32.
pub fn write_map(path: &Path, map: &Map) -> Result<(), BundleError> {
    let bytes: Vec<u8> = map.data.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).map_err(|source| BundleError::Io { path: path.to_owned(), source })
}

/// sha256 of a file, lowercase hex.
/// Lowercase hex sha256 of bytes in memory.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn sha256_file(path: &Path) -> Result<String, BundleError> {
    let io = |source| BundleError::Io { path: path.to_owned(), source };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
