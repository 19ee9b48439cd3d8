//! The detector: bundle graphs in tract, frame in, map and verdict out, no other I/O.
//!
//! This is the only module that imports tract. At load it pins every graph's input facts from
//! the manifest, optimises and makes the plans runnable once; a frame then runs the teacher on
//! one thread while the Se -> Sd chain runs on another (docs/ARCHITECTURE.md §6), and the anomaly map is
//! built from the three sets of features by [`anomaly_map`].

pub mod anomaly_map;
pub mod memory_bank;
pub mod profile;
pub mod verdict;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use image::DynamicImage;
use serde::Serialize;
use tract_onnx::prelude::*;

use crate::bundle::{Bundle, BundleError, GraphSet, Manifest};
use crate::preprocess;
use crate::tiling;
use anomaly_map::{FeatureMap, Map};
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
}

type Plan = Arc<TypedRunnableModel>;

/// One graph, ready to run, with the file it came from (for error messages).
struct Graph {
    plan: Plan,
    path: PathBuf,
    inputs: Vec<Vec<usize>>,
}

impl Graph {
    /// A tract error while running this graph, naming its file.
    fn error(&self, e: TractError) -> DetectorError {
        DetectorError::Run { graph: self.path.display().to_string(), message: format!("{e:#}") }
    }
}

/// Milliseconds spent in each stage of one inspection.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// Frame bytes -> image; filled by callers that decode (`dskd bench`), else 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub decode_ms: f64,
    pub preprocess_ms: f64,
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
    /// The hybrid map's bank and divisors, when the bundle has one.
    memory_bank: Option<Hybrid>,
    levels: Vec<[usize; 3]>,
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

/// Loads an ONNX file into a runnable plan with the given input shapes pinned.
fn load_plan(path: &Path, inputs: &[Vec<usize>], layout: Layout) -> Result<Plan, DetectorError> {
    let err = |e: TractError| DetectorError::Load { path: path.to_owned(), message: format!("{e:#}") };
    let mut model = tract_onnx::onnx().model_for_path(path).map_err(err)?;
    for (i, shape) in inputs.iter().enumerate() {
        model = model.with_input_fact(i, f32::fact(shape).into()).map_err(err)?;
    }
    let mut model = model.into_typed().map_err(err)?;
    // The rewrite runs on a decluttered graph; the default path leaves decluttering to
    // `into_optimized` (which does it anyway), so loading costs what it did.
    if layout == Layout::ChannelsLast {
        model = model.into_decluttered().map_err(err)?;
        let missing = || TractError::msg("this tract has no `conv_nhwc` transform");
        let t = tract_onnx::tract_core::transform::get_transform("conv_nhwc").map_err(err)?.ok_or_else(missing);
        t.map_err(err)?.transform(&mut model).map_err(err)?;
    }
    model.into_optimized().map_err(err)?.into_runnable().map_err(err)
}

/// How tract lays out the convolutions' activations inside a plan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Layout {
    /// As the ONNX files have them (NCHW): the default.
    #[default]
    ChannelsFirst,
    /// Rewritten to NHWC by tract's `conv_nhwc` transform (`dskd bench --channels-last`). A
    /// lever to measure: on x86 tract 0.23.9 vectorises depthwise convolutions only in the
    /// channels-first layout, so it bought nothing there (docs/PERFORMANCE.md); aarch64 is
    /// where tract has a channel-last depthwise kernel.
    ChannelsLast,
}

impl Detector {
    /// Loads the graphs of `precision` from an opened (hash-checked) bundle.
    pub fn load(bundle: &Bundle, precision: Precision) -> Result<Self, DetectorError> {
        Self::load_with(bundle, precision, Layout::default())
    }

    /// [`Detector::load`] with the plans' convolutions in the given layout.
    pub fn load_with(bundle: &Bundle, precision: Precision, layout: Layout) -> Result<Self, DetectorError> {
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
            let plan = load_plan(&path, inputs, layout)?;
            Ok(Graph { plan, path, inputs: inputs.to_vec() })
        };
        Ok(Self {
            manifest: Arc::new(m.clone()),
            precision,
            teacher: graph(&set.teacher, std::slice::from_ref(&image))?,
            student_e: graph(&set.student_e, std::slice::from_ref(&image))?,
            student_d: set.student_d.as_deref().map(|f| graph(f, &level_inputs)).transpose()?,
            memory_bank: Hybrid::load(bundle)?,
            levels,
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

    /// Runs one graph; returns its outputs as feature maps checked against the manifest.
    fn run(&self, g: &Graph, inputs: TVec<TValue>) -> Result<Vec<FeatureMap>, DetectorError> {
        let outputs = g.plan.run(inputs).map_err(|e| g.error(e))?;
        self.feature_maps(g, &outputs)
    }

    /// Features of teacher, Se and (if present) Sd for one preprocessed input tensor; the
    /// teacher runs on its own thread beside the student chain.
    pub fn features(&self, input: &[f32], t: &mut Timings) -> Result<[Vec<FeatureMap>; 3], DetectorError> {
        let m = &self.manifest;
        let shape = [1, 3, m.input.height as usize, m.input.width as usize];
        let tensor = Tensor::from_shape(&shape, input).map_err(|e| self.teacher.error(e))?;
        let value: TValue = tensor.into_tvalue();
        let start = Instant::now();
        let run_teacher = |v: TValue| {
            let s = Instant::now();
            self.run(&self.teacher, tvec![v]).map(|f| (f, ms(s)))
        };
        let (teacher, students) = if self.parallel {
            std::thread::scope(|scope| {
                let v = value.clone();
                let teacher = scope.spawn(move || run_teacher(v));
                let students = self.student_chain(value, t);
                (teacher.join().expect("teacher thread panicked"), students)
            })
        } else {
            (run_teacher(value.clone()), self.student_chain(value, t))
        };
        t.networks_ms = ms(start);
        let (teacher, teacher_ms) = teacher?;
        t.teacher_ms = teacher_ms;
        let (e, d) = students?;
        Ok([teacher, e, d])
    }

    /// The teacher's features alone, on the calling thread (the nearest-neighbour scorer of
    /// `dskd eval --knn`).
    pub fn teacher_features(&self, input: &[f32]) -> Result<Vec<FeatureMap>, DetectorError> {
        let m = &self.manifest;
        let shape = [1, 3, m.input.height as usize, m.input.width as usize];
        let tensor = Tensor::from_shape(&shape, input).map_err(|e| self.teacher.error(e))?;
        self.run(&self.teacher, tvec![tensor.into_tvalue()])
    }

    /// Se, then Sd on Se's features (empty when the bundle is the S-T baseline).
    fn student_chain(
        &self,
        image: TValue,
        t: &mut Timings,
    ) -> Result<(Vec<FeatureMap>, Vec<FeatureMap>), DetectorError> {
        let s = Instant::now();
        let err = |e: TractError| self.student_e.error(e);
        let e_out = self.student_e.plan.run(tvec![image]).map_err(err)?;
        t.student_e_ms = ms(s);
        let e = self.feature_maps(&self.student_e, &e_out)?;
        let Some(sd) = &self.student_d else { return Ok((e, Vec::new())) };
        let s = Instant::now();
        let d = self.run(sd, e_out.into_iter().collect())?;
        t.student_d_ms = ms(s);
        Ok((e, d))
    }

    /// Graph outputs as feature maps, each checked against the manifest's level shape.
    fn feature_maps(&self, g: &Graph, outputs: &TVec<TValue>) -> Result<Vec<FeatureMap>, DetectorError> {
        outputs
            .iter()
            .zip(&self.levels)
            .enumerate()
            .map(|(index, (t, &expected))| {
                let shape = t.shape().to_vec();
                if shape != [1, expected[0], expected[1], expected[2]] {
                    return Err(DetectorError::Shape {
                        graph: g.path.display().to_string(),
                        index,
                        found: shape,
                        expected,
                    });
                }
                let view = t.to_plain_array_view::<f32>().map_err(|e| g.error(e))?;
                let [channels, height, width] = expected;
                Ok(FeatureMap { data: view.iter().copied().collect(), channels, height, width })
            })
            .collect()
    }

    /// The anomaly map and its score for one preprocessed input tensor.
    pub fn map(&self, input: &[f32], t: &mut Timings) -> Result<(Map, f32), DetectorError> {
        let [teacher, e, d] = self.features(input, t)?;
        let s = Instant::now();
        let mut map = self.students_map(&teacher, &e, &d);
        if let Some(hybrid) = &self.memory_bank {
            // Latency mode: both cores are free once the networks are done.
            let threads = if self.parallel { 2 } else { 1 };
            map = hybrid.fuse(map, &teacher, self.manifest.map.sigma, threads);
        }
        let score = anomaly_map::score(&map, self.manifest.map.score);
        t.map_ms = ms(s);
        Ok((map, score))
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
        for input in &inputs {
            let mut tile = Timings::default();
            maps.push(self.map(input, &mut tile)?.0);
            t.add_networks(&tile);
        }
        let s = Instant::now();
        let map = tiling::stitch(&maps, &spec.tiles, spec.width, spec.height);
        let score = anomaly_map::score(&map, self.manifest.map.score);
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

/// An ONNX graph with chosen tensors as outputs, for looking inside it. The trainer uses it
/// to collect activation statistics for int8 calibration.
pub struct Probe {
    path: PathBuf,
    shapes: Vec<Vec<usize>>,
    plan: Plan,
}

impl Probe {
    /// Loads `path` with the given input shapes and `outputs` (tensor names) as its outputs.
    pub fn new(path: &Path, shapes: &[Vec<usize>], outputs: &[String]) -> Result<Self, DetectorError> {
        let err = |e: TractError| DetectorError::Load { path: path.to_owned(), message: format!("{e:#}") };
        let mut model = tract_onnx::onnx().model_for_path(path).map_err(err)?;
        for (i, shape) in shapes.iter().enumerate() {
            model = model.with_input_fact(i, f32::fact(shape).into()).map_err(err)?;
        }
        model.select_outputs_by_name(outputs).map_err(err)?;
        let plan = model.into_optimized().map_err(err)?.into_runnable().map_err(err)?;
        Ok(Self { path: path.to_owned(), shapes: shapes.to_vec(), plan })
    }

    /// Runs once; returns every selected output flattened.
    pub fn run(&self, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>, DetectorError> {
        let err =
            |e: TractError| DetectorError::Run { graph: self.path.display().to_string(), message: format!("{e:#}") };
        let values: TVec<TValue> = inputs
            .iter()
            .zip(&self.shapes)
            .map(|(data, shape)| Tensor::from_shape(shape, data).map(|t| t.into_tvalue()))
            .collect::<TractResult<_>>()
            .map_err(err)?;
        let out = self.plan.run(values).map_err(err)?;
        out.iter().map(|t| Ok(t.to_plain_array_view::<f32>().map_err(err)?.iter().copied().collect())).collect()
    }
}
