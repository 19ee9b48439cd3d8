//! The detector: bundle graphs on an inference engine, frame in, map and verdict out, no
//! other I/O.
//!
//! This is the only module that imports an engine ([`engine`]: tract by default, onnxruntime
//! as an option). At load it pins every graph's input shapes from the manifest and makes the
//! graphs runnable once; a frame then runs the teacher on
//! one thread while the Se -> Sd chain runs on another (docs/ARCHITECTURE.md §6), and the anomaly map is
//! built from the three sets of features by [`anomaly_map`]; the image's score is the map's,
//! plus, when the bundle has one, the [`image_gaussian`] distance of the teacher's statistics.

pub mod anomaly_map;
pub mod engine;
pub mod image_gaussian;
pub mod memory_bank;
pub mod profile;
mod tensor_file;
pub mod verdict;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use image::DynamicImage;
use serde::Serialize;

use crate::bundle::{Bundle, BundleError, GraphSet, Manifest};
use crate::preprocess;
use crate::tiling;
use anomaly_map::{FeatureMap, Map};
pub use engine::tract::Probe;
pub use engine::{Engine, Layout};
use engine::{GraphRunner, Output};
use image_gaussian::ImageGaussian;
use memory_bank::Hybrid;
use verdict::Verdict;

/// Which graphs of a bundle to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    Int8,
}

impl Precision {
    /// `f32` or `int8`, as in reports and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
        }
    }

    /// The precisions a bundle has graphs for: f32, and int8 when it kept them.
    pub fn of(m: &Manifest) -> &'static [Precision] {
        if m.graphs.int8.is_some() { &[Precision::F32, Precision::Int8] } else { &[Precision::F32] }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DetectorError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("{path}: cannot load ONNX graph: {message}")]
    Load { path: PathBuf, message: String },
    #[error("{graph}: inference failed: {message}")]
    Run { graph: String, message: String },
    #[error("{bundle}: the bundle has no int8 graphs")]
    NoInt8 { bundle: PathBuf },
    #[error("{graph}: output {index} has shape {found:?}, the manifest expects {expected:?}")]
    Shape { graph: String, index: usize, found: Vec<usize>, expected: [usize; 3] },
    #[error(transparent)]
    MemoryBank(#[from] memory_bank::MemoryBankError),
    #[error(transparent)]
    ImageGaussian(#[from] image_gaussian::ImageGaussianError),
    #[error("this dskd was built without the {engine} engine (cargo feature `{engine}`)")]
    EngineMissing { engine: &'static str },
    #[error("onnxruntime engine: {message}")]
    EngineLibrary { message: String },
    #[error("the bundle has no half-scale teacher graph (graphs.teacher_half)")]
    NoHalfTeacher,
    #[error("per-operator profiles are tract's; this detector runs on {engine}")]
    NotTract { engine: &'static str },
}

/// One graph, ready to run, with the file it came from (for error messages).
struct Graph {
    runner: Box<dyn GraphRunner>,
    path: PathBuf,
    inputs: Vec<Vec<usize>>,
}

impl Graph {
    /// An engine error while running this graph, naming its file.
    fn error(&self, message: String) -> DetectorError {
        DetectorError::Run { graph: self.path.display().to_string(), message }
    }

    fn run(&self, inputs: &[&[f32]]) -> Result<Vec<Output>, DetectorError> {
        self.runner.run(inputs).map_err(|m| self.error(m))
    }
}

/// Milliseconds spent in each stage of one inspection.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// Frame bytes -> image; filled by callers that decode (`dskd bench`), else 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub decode_ms: f64,
    pub preprocess_ms: f64,
    /// The teacher, and the half-scale teacher after it when the bundle has one.
    pub teacher_ms: f64,
    pub student_e_ms: f64,
    pub student_d_ms: f64,
    /// Wall time of the concurrent T ∥ (Se -> Sd) step.
    pub networks_ms: f64,
    pub map_ms: f64,
    /// Threshold, regions and severity.
    pub verdict_ms: f64,
    pub total_ms: f64,
}

impl Timings {
    /// Adds one tile's network and map times (a tiled frame's are the sums over its tiles).
    fn add_networks(&mut self, tile: &Timings) {
        self.teacher_ms += tile.teacher_ms;
        self.student_e_ms += tile.student_e_ms;
        self.student_d_ms += tile.student_d_ms;
        self.networks_ms += tile.networks_ms;
        self.map_ms += tile.map_ms;
    }
}

/// One input's features: the teacher's, the half-scale teacher's (empty without one), Se's
/// and Sd's (empty for the S-T baseline).
pub struct Features {
    pub teacher: Vec<FeatureMap>,
    pub half: Vec<FeatureMap>,
    pub e: Vec<FeatureMap>,
    pub d: Vec<FeatureMap>,
}

/// The full result for one image.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub map: Map,
    pub verdict: Verdict,
    pub timings: Timings,
}

/// Loaded plans of one bundle at one precision.
pub struct Detector {
    manifest: Arc<Manifest>,
    precision: Precision,
    teacher: Graph,
    student_e: Graph,
    student_d: Option<Graph>,
    /// The teacher on the input averaged 2x2, for the memory bank's half-scale map.
    teacher_half: Option<Graph>,
    /// The hybrid map's bank and divisors, when the bundle has one.
    memory_bank: Option<Hybrid>,
    /// The image score's Gaussian of teacher statistics, when the bundle has one.
    image_gaussian: Option<ImageGaussian>,
    levels: Vec<[usize; 3]>,
    /// `teacher_half`'s level shapes: half of `levels`' grids.
    half_levels: Vec<[usize; 3]>,
    /// The engine's name, for reports.
    engine: &'static str,
    /// Teacher on its own thread beside Se -> Sd (latency), or all on the caller's thread
    /// (throughput: one frame per core).
    parallel: bool,
}

/// `[channels, height, width]` of every pyramid level for this manifest.
pub fn level_shapes(m: &Manifest) -> Vec<[usize; 3]> {
    m.teacher
        .channels
        .iter()
        .zip(&m.teacher.strides)
        .map(|(&c, &s)| [c, m.input.height as usize / s, m.input.width as usize / s])
        .collect()
}

/// Splits tract's matrix products over a pool of `n` threads from now on, for every plan
/// (`n <= 1`: back to the calling thread). A process-wide setting of tract's.
#[cfg(feature = "mm-threads")]
pub fn set_matmul_threads(n: usize) {
    use tract_linalg::multithread::{Executor, set_default_executor};
    set_default_executor(if n > 1 { Executor::multithread(n) } else { Executor::SingleThread });
}

impl Detector {
    /// Loads the graphs of `precision` from an opened (hash-checked) bundle, on tract.
    pub fn load(bundle: &Bundle, precision: Precision) -> Result<Self, DetectorError> {
        Self::load_with(bundle, precision, &Engine::default())
    }

    /// [`Detector::load`] on the given engine.
    pub fn load_with(bundle: &Bundle, precision: Precision, engine: &Engine) -> Result<Self, DetectorError> {
        let m = &bundle.manifest;
        let set: &GraphSet = match precision {
            Precision::F32 => &m.graphs.f32,
            Precision::Int8 => {
                m.graphs.int8.as_ref().ok_or_else(|| DetectorError::NoInt8 { bundle: bundle.dir.clone() })?
            }
        };
        let image = vec![1, 3, m.input.height as usize, m.input.width as usize];
        let levels = level_shapes(m);
        let level_inputs: Vec<Vec<usize>> = levels.iter().map(|l| [&[1][..], &l[..]].concat()).collect();
        let graph = |file: &str, inputs: &[Vec<usize>]| -> Result<Graph, DetectorError> {
            let path = bundle.path(file);
            let runner = engine::load_graph(engine, &path, inputs)?;
            Ok(Graph { runner, path, inputs: inputs.to_vec() })
        };
        Ok(Self {
            manifest: Arc::new(m.clone()),
            precision,
            teacher: graph(&set.teacher, std::slice::from_ref(&image))?,
            student_e: graph(&set.student_e, std::slice::from_ref(&image))?,
            student_d: set.student_d.as_deref().map(|f| graph(f, &level_inputs)).transpose()?,
            teacher_half: m
                .graphs
                .teacher_half
                .as_deref()
                .map(|f| graph(f, std::slice::from_ref(&image)))
                .transpose()?,
            memory_bank: Hybrid::load(bundle)?,
            image_gaussian: ImageGaussian::load(bundle, precision)?,
            half_levels: levels.iter().map(|&[c, h, w]| [c, h / 2, w / 2]).collect(),
            levels,
            engine: engine.name(),
            parallel: true,
        })
    }

    /// Runs the teacher beside the student chain (default) or everything on the calling
    /// thread, for callers that put one frame on each core instead.
    pub fn set_parallel(&mut self, parallel: bool) {
        self.parallel = parallel;
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The engine's name (`tract`, `onnxruntime`).
    pub fn engine(&self) -> &'static str {
        self.engine
    }

    /// Runs one graph; returns its outputs as feature maps checked against the manifest.
    fn run(&self, g: &Graph, inputs: &[&[f32]]) -> Result<Vec<FeatureMap>, DetectorError> {
        self.feature_maps(g, g.run(inputs)?, &self.levels)
    }

    /// Features of teacher, Se and (if present) Sd for one preprocessed input tensor, and of
    /// the half-scale teacher when the bundle has one; the teachers run on their own thread
    /// beside the student chain.
    pub fn features(&self, input: &[f32], t: &mut Timings) -> Result<Features, DetectorError> {
        let start = Instant::now();
        let run_teachers = || {
            let s = Instant::now();
            let teacher = self.run(&self.teacher, &[input])?;
            let half = if self.teacher_half.is_some() { self.half_teacher_features(input)? } else { Vec::new() };
            Ok::<_, DetectorError>((teacher, half, ms(s)))
        };
        let (teachers, students) = if self.parallel {
            std::thread::scope(|scope| {
                let teachers = scope.spawn(run_teachers);
                let students = self.student_chain(input, t);
                (teachers.join().expect("teacher thread panicked"), students)
            })
        } else {
            (run_teachers(), self.student_chain(input, t))
        };
        t.networks_ms = ms(start);
        let (teacher, half, teacher_ms) = teachers?;
        t.teacher_ms = teacher_ms;
        let (e, d) = students?;
        Ok(Features { teacher, half, e, d })
    }

    /// The teacher's features alone, on the calling thread (the nearest-neighbour scorer of
    /// `dskd eval --knn`).
    pub fn teacher_features(&self, input: &[f32]) -> Result<Vec<FeatureMap>, DetectorError> {
        self.run(&self.teacher, &[input])
    }

    /// The half-scale teacher's features (`graphs.teacher_half`), on the calling thread.
    pub fn half_teacher_features(&self, input: &[f32]) -> Result<Vec<FeatureMap>, DetectorError> {
        let g = self.teacher_half.as_ref().ok_or(DetectorError::NoHalfTeacher)?;
        self.feature_maps(g, g.run(&[input])?, &self.half_levels)
    }

    /// Se, then Sd on Se's features (empty when the bundle is the S-T baseline).
    fn student_chain(
        &self,
        image: &[f32],
        t: &mut Timings,
    ) -> Result<(Vec<FeatureMap>, Vec<FeatureMap>), DetectorError> {
        let s = Instant::now();
        let e = self.run(&self.student_e, &[image])?;
        t.student_e_ms = ms(s);
        let Some(sd) = &self.student_d else { return Ok((e, Vec::new())) };
        let s = Instant::now();
        let inputs: Vec<&[f32]> = e.iter().map(|f| f.data.as_slice()).collect();
        let d = self.run(sd, &inputs)?;
        t.student_d_ms = ms(s);
        Ok((e, d))
    }

    /// Graph outputs as feature maps, each checked against its expected level shape.
    fn feature_maps(
        &self,
        g: &Graph,
        outputs: Vec<Output>,
        levels: &[[usize; 3]],
    ) -> Result<Vec<FeatureMap>, DetectorError> {
        outputs
            .into_iter()
            .zip(levels)
            .enumerate()
            .map(|(index, (out, &expected))| {
                if out.shape != [1, expected[0], expected[1], expected[2]] {
                    return Err(DetectorError::Shape {
                        graph: g.path.display().to_string(),
                        index,
                        found: out.shape,
                        expected,
                    });
                }
                let [channels, height, width] = expected;
                Ok(FeatureMap { data: out.data, channels, height, width })
            })
            .collect()
    }

    /// The anomaly map and its score for one preprocessed input tensor.
    pub fn map(&self, input: &[f32], t: &mut Timings) -> Result<(Map, f32), DetectorError> {
        let (map, distance) = self.input_map(input, t)?;
        let s = Instant::now();
        let score = self.image_score(&map, distance);
        t.map_ms += ms(s);
        Ok((map, score))
    }

    /// The anomaly map of one input and its image Gaussian distance (`None` without one).
    fn input_map(&self, input: &[f32], t: &mut Timings) -> Result<(Map, Option<f32>), DetectorError> {
        let f = self.features(input, t)?;
        let s = Instant::now();
        let mut map = self.students_map(&f.teacher, &f.e, &f.d);
        if let Some(hybrid) = &self.memory_bank {
            // Latency mode: both cores are free once the networks are done.
            let threads = if self.parallel { 2 } else { 1 };
            map = hybrid.fuse(map, &f.teacher, &f.half, self.manifest.map.sigma, threads);
        }
        let distance = self.image_gaussian.as_ref().map(|g| g.image_distance(&f.teacher));
        t.map_ms = ms(s);
        Ok((map, distance))
    }

    /// The image score: the map's, joined with the image Gaussian's distance when the bundle
    /// has one (a tiled frame's: the largest of its tiles').
    pub fn image_score(&self, map: &Map, distance: Option<f32>) -> f32 {
        let score = anomaly_map::score(map, self.manifest.map.score);
        match (&self.image_gaussian, distance) {
            (Some(g), Some(d)) => g.fuse(score, d),
            _ => score,
        }
    }

    /// The anomaly map (at the input's canvas size) and its score for one decoded image:
    /// [`Self::map`] of its one input, or of each tile, stitched ([`crate::tiling`]).
    pub fn frame_map(&self, img: &DynamicImage, t: &mut Timings) -> Result<(Map, f32), DetectorError> {
        let start = Instant::now();
        let spec = &self.manifest.input;
        let inputs = preprocess::to_tiles(img, spec);
        t.preprocess_ms = ms(start);
        if let [input] = inputs.as_slice() {
            return self.map(input, t);
        }
        let mut maps = Vec::with_capacity(inputs.len());
        let mut distance: Option<f32> = None;
        for input in &inputs {
            let mut tile = Timings::default();
            let (map, d) = self.input_map(input, &mut tile)?;
            maps.push(map);
            distance = d.map(|d| distance.map_or(d, |m| m.max(d)));
            t.add_networks(&tile);
        }
        let s = Instant::now();
        let map = tiling::stitch(&maps, &spec.tiles, spec.width, spec.height);
        let score = self.image_score(&map, distance);
        t.map_ms += ms(s);
        Ok((map, score))
    }

    /// The students' map of computed features (Se's, and Sd's unless empty), without the
    /// memory bank, at input size.
    pub fn students_map(&self, teacher: &[FeatureMap], e: &[FeatureMap], d: &[FeatureMap]) -> Map {
        let students: Vec<&[FeatureMap]> = [e, d].into_iter().filter(|s| !s.is_empty()).collect();
        let m = &self.manifest;
        anomaly_map::anomaly_map(teacher, &students, &m.map, m.input.height as usize, m.input.width as usize)
    }

    /// (image, pixel) thresholds calibrated for this precision.
    pub fn thresholds(&self) -> (f32, f32) {
        let c = &self.manifest.calibration;
        match (self.precision, c.int8_threshold, c.int8_pixel_threshold) {
            (Precision::Int8, Some(t), Some(p)) => (t, p),
            _ => (c.threshold, c.pixel_threshold),
        }
    }

    /// Preprocess, networks, map and verdict for one decoded image.
    pub fn inspect(&self, img: &DynamicImage) -> Result<Inspection, DetectorError> {
        self.inspect_with_threshold(img, None)
    }

    /// [`Self::inspect`], judged against `threshold` instead of the calibrated image threshold
    /// when given (the daemon's `cmd/threshold`).
    pub fn inspect_with_threshold(
        &self,
        img: &DynamicImage,
        threshold: Option<f32>,
    ) -> Result<Inspection, DetectorError> {
        let start = Instant::now();
        let mut timings = Timings::default();
        let (map, score) = self.frame_map(img, &mut timings)?;
        let (calibrated, pixel_threshold) = self.thresholds();
        let threshold = threshold.unwrap_or(calibrated);
        let s = Instant::now();
        let verdict = verdict::decide(&map, score, threshold, pixel_threshold, img.width(), img.height());
        timings.verdict_ms = ms(s);
        timings.total_ms = ms(start);
        Ok(Inspection { map, verdict, timings })
    }
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// Milliseconds since `since`.
pub(crate) fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}
