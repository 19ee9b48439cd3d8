//! The training loop (glue only): data -> cached teacher features -> students fitted with
//! Adam -> the checkpoint with the lowest loss on held-out normal images.
//!
//! The teacher is frozen, so its features for every image are computed once, up front, on the
//! plain (non-autodiff) device; each step then runs only the students forward and backward.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use crate::progress::progress_bar;
use anyhow::{Context, Result, bail};
use burn::optim::{AdamConfig, GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::data::{self, DataSet};
use super::loss::{LossSettings, SdLoss, dskd_loss};
use super::nets::backbone::{Arch, Backbone};
use super::nets::students::{StudentE, Students};
use super::weights;
use crate::augment::Augment;
use crate::detector::anomaly_map::{FeatureMap, MapSettings};
use crate::preprocess::{self, InputSpec, Normalize};
use crate::synth::Rng;
use crate::tiling::Tiles;

/// Where the good images come from.
#[derive(Debug, Clone)]
pub enum DataSource {
    /// Folders of good images, taken together.
    Folders(Vec<PathBuf>),
    Split(PathBuf),
}

/// Everything `dskd-train` can be told.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub data: DataSource,
    pub arch: Arch,
    pub teacher_weights: PathBuf,
    pub out: PathBuf,
    pub checkpoints: PathBuf,
    /// Input width (a multiple of 32), and its height when that differs (None: square): a
    /// line camera's frame keeps its aspect instead of being squashed to a square.
    pub size: u32,
    pub height: Option<u32>,
    /// The tile grid a frame is cut into (one tile: the whole frame at `size`).
    pub tiles: Tiles,
    /// How frames are normalised (stored in the bundle; the daemon does the same).
    pub normalize: Normalize,
    pub epochs: usize,
    /// Stop after this many optimiser steps in all (short schedules, tests).
    pub max_steps: Option<usize>,
    /// Use at most this many training images (short schedules).
    pub max_train_images: Option<usize>,
    pub batch: usize,
    /// Each batch is cut into this many shards, run forward and backward at the same time on
    /// separate threads, their gradients summed (1 = the whole batch in one pass).
    pub shards: usize,
    pub lr: f64,
    /// Learning rate over the run: constant, or a cosine decay to 0 at the last step.
    pub lr_schedule: LrSchedule,
    pub seed: u64,
    /// Both students (DSKD) or Se alone (the vanilla S-T baseline).
    pub dual: bool,
    /// Se's architecture (the teacher's, or dense convolutions).
    pub student_e: StudentE,
    pub se_sd_weight: f32,
    /// Sd's loss: per pixel (the published method) or RD4AD's flattened form.
    pub sd_loss: SdLoss,
    /// How maps are fused, blurred and scored (stored in the bundle).
    pub map: MapSettings,
    /// How the level/student maps are weighted (`map.weights`, computed at export).
    pub level_weights: LevelWeights,
    /// Entries of the hybrid map's memory bank of normal teacher features (0 = none), and
    /// the teacher levels (1-based) they come from.
    pub memory_bank: usize,
    pub memory_bank_levels: Vec<usize>,
    /// What the students' and the bank's maps are each divided by before they are added.
    pub bank_divisor: crate::detector::memory_bank::Divisor,
    /// Input scales the memory bank scores: 1 = the input's size, 2 = also at half size
    /// (its own bank and divisor; the teacher on the input averaged 2x2).
    pub bank_scales: u8,
    /// How the half-scale bank's map joins the full-size map (`bank_scales` 2).
    pub bank_scale_fusion: crate::bundle::ScaleFusion,
    /// Add the image Gaussian's distance to the image score (`detector::image_gaussian`).
    pub image_gaussian: bool,
    /// Which per-channel statistics the image Gaussian models.
    pub image_gaussian_stats: crate::bundle::GaussianStatistics,
    /// Flipped or turned copies of the training images (students and memory bank).
    pub augment: Augment,
    pub resume: bool,
    /// Stop fitting once the next epoch would end after this many seconds (the bundle is still
    /// written from the best checkpoint so far).
    pub time_budget_s: Option<f64>,
    /// Early stop: end training once the best held-out loss improved by less than
    /// `min_improvement` (relative) over the last `patience` epochs (0 = never).
    pub patience: usize,
    pub min_improvement: f32,
    /// Skip training: export the bundle from `<checkpoints>/best.bpk`.
    pub export_only: bool,
    /// Train and checkpoint only (export later with `export_only`, e.g. on another machine).
    pub no_bundle: bool,
    /// int8 graphs are kept only if, on the held-out normals, their scores stay within this
    /// fraction of the threshold of the f32 scores (see `bundle_writer`).
    pub int8_bound: f32,
    pub false_alarm_rate: f64,
    pub golden: usize,
    pub calibration_images: usize,
    pub val_fraction: f64,
    pub device: Device,
    pub device_name: String,
    pub progress: bool,
}

/// One image's tensors: the network input and the teacher's three levels.
struct Sample {
    input: Vec<f32>,
    teacher: Vec<FeatureMap>,
}

/// What is saved beside the checkpoints so `--resume` can continue.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    epoch: usize,
    steps: usize,
    best_val_loss: f32,
    seed: u64,
    /// Training throughput (images/s) of the last epoch's steps (kept across `--resume`).
    #[serde(default)]
    images_per_s: f64,
    /// What the checkpoints are (checked by `--resume` and `--export-only`).
    #[serde(default)]
    model: Option<ModelShape>,
    /// Seconds spent fitting, all runs together.
    #[serde(default)]
    fit_s: f64,
    /// `--device` of the training run.
    #[serde(default)]
    device: String,
    /// Best held-out loss so far after each epoch (for the early stop; kept across `--resume`).
    #[serde(default)]
    best_history: Vec<f32>,
}

/// How the six level/student maps are weighted in the students' map (set at export).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LevelWeights {
    /// All 1: the published sum.
    Equal,
    /// Each map divided by the spread (standard deviation) of its image scores on the
    /// held-out normals, so no one map's noise on normal images sets the tail of the normal
    /// scores the threshold is read from (as the hybrid's divisors do for its maps). The
    /// default: it rescued the runs whose Se came out noisy (docs/RESULTS.md §0f).
    #[default]
    Spread,
}

/// How the learning rate moves over the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LrSchedule {
    #[default]
    Constant,
    /// `lr · (1 + cos(π · step / steps)) / 2`: from `lr` down to 0 at the last step of
    /// `--epochs` (or `--max-steps`), so it wants an explicit schedule length.
    Cosine,
}

impl LrSchedule {
    pub fn name(self) -> &'static str {
        match self {
            LrSchedule::Constant => "constant",
            LrSchedule::Cosine => "cosine",
        }
    }

    /// The rate at `step` of `total` steps.
    pub fn at(self, lr: f64, step: usize, total: usize) -> f64 {
        match self {
            LrSchedule::Constant => lr,
            LrSchedule::Cosine => lr * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total.max(1) as f64).cos()),
        }
    }
}

/// The early stop's rule: `Some(relative improvement)` when the best held-out loss after the
/// last epoch is less than `min_improvement` below the best `patience` epochs earlier.
pub fn plateaued(best_history: &[f32], patience: usize, min_improvement: f32) -> Option<f32> {
    if patience == 0 || best_history.len() <= patience {
        return None;
    }
    let now = *best_history.last()?;
    let then = best_history[best_history.len() - 1 - patience];
    let gain = (then - now) / then.abs().max(1e-12);
    (gain < min_improvement).then_some(gain)
}

/// The options a checkpoint only makes sense with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ModelShape {
    teacher: String,
    size: u32,
    /// Absent in checkpoints older than the option (and for square inputs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    height: Option<u32>,
    dual: bool,
    /// Absent in checkpoints older than the option: those have the teacher's architecture.
    #[serde(default)]
    student_e: StudentE,
    /// Absent in checkpoints older than the option: those were trained with `fixed`.
    #[serde(default)]
    normalize: Normalize,
    /// Absent in checkpoints older than the option (and for one tile).
    #[serde(default, skip_serializing_if = "Tiles::is_single")]
    tiles: Tiles,
}

impl ModelShape {
    fn of(opts: &TrainOptions) -> Self {
        Self {
            teacher: opts.arch.name().into(),
            size: opts.size,
            height: opts.height.filter(|&h| h != opts.size),
            dual: opts.dual,
            student_e: opts.student_e,
            normalize: opts.normalize,
            tiles: opts.tiles,
        }
    }

    fn describe(&self) -> String {
        let students = if self.dual { "dual" } else { "se" };
        let t = &self.tiles;
        let tiles = if t.is_single() {
            String::new()
        } else {
            format!(", {}x{} tiles overlapping {} px", t.across, t.down, t.overlap)
        };
        let size = match self.height {
            Some(h) => format!("{}x{h}", self.size),
            None => self.size.to_string(),
        };
        format!(
            "{} model at {size} px{tiles} ({students} students, Se {}, {} normalisation)",
            self.teacher,
            self.student_e.name(),
            self.normalize.name()
        )
    }
}

/// The outcome of training, before export.
pub struct Trained {
    pub students: Students,
    pub teacher: Backbone,
    pub spec: InputSpec,
    pub data: DataSet,
    pub best_val_loss: f32,
    pub epochs: usize,
    pub steps: usize,
    pub images_per_s: f64,
    pub train_images: usize,
    pub wall_s: f64,
    /// The device the students were trained on (`cpu`, `cuda`).
    pub trained_on: String,
}

/// Decodes and preprocesses images (progress shown), naming any file that fails: one input
/// per image, or per tile of each image when the input is tiled (the tiles the daemon serves).
pub fn load_inputs(paths: &[PathBuf], spec: &InputSpec, show: bool) -> Result<Vec<Vec<f32>>> {
    let bar = progress_bar(paths.len() as u64, "load", show);
    let mut out = Vec::with_capacity(paths.len() * spec.tiles.count());
    for p in paths {
        out.extend(preprocess::to_tiles(&preprocess::load_image(p)?, spec));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// `[B, C, H, W]` tensor from per-sample planar data.
fn stack(parts: &[&[f32]], shape: [usize; 3], device: &Device) -> Tensor<4> {
    let flat: Vec<f32> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    Tensor::from_data(TensorData::new(flat, [parts.len(), shape[0], shape[1], shape[2]]), device)
}

/// Splits a `[B, C, H, W]` tensor into per-sample feature maps.
pub fn to_feature_maps(t: Tensor<4>) -> Vec<FeatureMap> {
    let [b, c, h, w] = t.dims();
    let data = t.into_data().try_into_vec::<f32>().expect("f32 features");
    data.chunks(c * h * w).take(b).map(|d| FeatureMap { data: d.to_vec(), channels: c, height: h, width: w }).collect()
}

/// Runs the frozen teacher over all inputs once.
fn teacher_features(
    teacher: &Backbone,
    inputs: Vec<Vec<f32>>,
    spec: &InputSpec,
    device: &Device,
    chunk: usize,
    show: bool,
) -> Vec<Sample> {
    let shape = [3, spec.height as usize, spec.width as usize];
    let bar = progress_bar(inputs.len() as u64, "teacher", show);
    let mut out = Vec::with_capacity(inputs.len());
    for chunk in inputs.chunks(chunk.max(1)) {
        let parts: Vec<&[f32]> = chunk.iter().map(|v| v.as_slice()).collect();
        let levels: Vec<Vec<FeatureMap>> =
            teacher.forward(stack(&parts, shape, device)).into_iter().map(to_feature_maps).collect();
        for (i, input) in chunk.iter().enumerate() {
            out.push(Sample { input: input.clone(), teacher: levels.iter().map(|l| l[i].clone()).collect() });
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    out
}

/// The batch tensors (input, teacher levels) for the given samples.
fn batch(samples: &[&Sample], spec: &InputSpec, device: &Device) -> (Tensor<4>, Vec<Tensor<4>>) {
    let inputs: Vec<&[f32]> = samples.iter().map(|s| s.input.as_slice()).collect();
    let x = stack(&inputs, [3, spec.height as usize, spec.width as usize], device);
    let levels = (0..samples[0].teacher.len())
        .map(|l| {
            let f = &samples[0].teacher[l];
            let parts: Vec<&[f32]> = samples.iter().map(|s| s.teacher[l].data.as_slice()).collect();
            stack(&parts, [f.channels, f.height, f.width], device)
        })
        .collect();
    (x, levels)
}

/// What every training step needs besides the model and the samples.
struct StepContext<'a> {
    spec: &'a InputSpec,
    device: &'a Device,
    loss: LossSettings,
}

/// One shard's loss, scaled by its share of the batch so the shards' gradients sum to the
/// whole batch's (the loss is a mean over images), and its gradients.
fn shard_gradients(
    model: &Students,
    samples: &[&Sample],
    of: usize,
    ctx: &StepContext,
    read: bool,
) -> (GradientsParams, Option<f32>) {
    let (x, t) = batch(samples, ctx.spec, ctx.device);
    let share = samples.len() as f32 / of as f32;
    let loss = dskd_loss(&t, &model.forward(x), ctx.loss).mul_scalar(share);
    let value = read.then(|| loss.clone().into_scalar::<f32>());
    (GradientsParams::from_grads(loss.backward(), model), value)
}

/// The gradients of one batch (and its loss when `read`): with `shards` > 1 the batch is cut
/// into that many shards that run on rayon's threads at once, each on its own fork of the
/// model (a fork has its own autodiff graph, so the backward passes do not wait on one lock),
/// and the gradients are summed. Why: burn's CPU backend parallelises only some kernels, so a
/// single pass leaves most of a second core idle. BatchNorm then normalises over each shard
/// rather than the whole batch (as in multi-GPU data parallelism); its running statistics are
/// averaged over the shards by burn.
fn batch_gradients(
    students: &Students,
    samples: &[&Sample],
    shards: usize,
    ctx: &StepContext,
    read: bool,
) -> (GradientsParams, Option<f32>) {
    if shards <= 1 {
        return shard_gradients(students, samples, samples.len(), ctx, read);
    }
    let per = samples.len().div_ceil(shards);
    let results: Vec<(GradientsParams, Option<f32>)> = samples
        .par_chunks(per)
        .map(|part| shard_gradients(&students.clone().fork(ctx.device), part, samples.len(), ctx, read))
        .collect();
    let mut sum = GradientsAccumulator::<Students>::new();
    let mut value = read.then_some(0.0);
    for (grads, v) in results {
        sum.accumulate(students, grads);
        value = value.zip(v).map(|(a, b)| a + b);
    }
    (sum.grads(), value)
}

/// Mean loss over held-out normal images, with the students in inference mode.
fn validation_loss(
    students: &Students,
    val: &[Sample],
    spec: &InputSpec,
    device: &Device,
    loss: LossSettings,
    chunk: usize,
) -> f32 {
    let mut total = 0.0;
    for chunk in val.chunks(chunk) {
        let refs: Vec<&Sample> = chunk.iter().collect();
        let (x, t) = batch(&refs, spec, device);
        let loss = dskd_loss(&t, &students.forward(x), loss);
        total += loss.into_scalar::<f32>() * chunk.len() as f32;
    }
    total / val.len() as f32
}

fn shuffle(order: &mut [usize], rng: &mut Rng) {
    for i in (1..order.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
}

/// Reads `state.json` and checks that the checkpoints were made for these options.
fn read_state(path: &Path, opts: &TrainOptions, why: &str) -> Result<State> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{why}: reading {}", path.display()))?;
    let state: State = serde_json::from_str(&text).with_context(|| format!("{why}: parsing {}", path.display()))?;
    if let Some(shape) = &state.model
        && *shape != ModelShape::of(opts)
    {
        bail!(
            "{why}: {} holds a {}, not a {}: give the same --teacher, --size, --students, \
             --student-e and --normalize as the training run",
            path.display(),
            shape.describe(),
            ModelShape::of(opts).describe(),
        );
    }
    Ok(state)
}

fn load_students(students: Students, path: &Path, why: &str) -> Result<Students> {
    students.try_load_file(path).map_err(|e| anyhow::anyhow!("{why}: loading {}: {e:?}", path.display()))
}

/// Per-step losses and per-epoch validation losses, as CSV beside the checkpoints.
struct TrainLog {
    out: std::io::BufWriter<std::fs::File>,
}

impl TrainLog {
    const HEADER: &str = "step,epoch,train_loss,val_loss,images_per_s,elapsed_s";

    fn open(path: &Path, append: bool) -> Result<Self> {
        let fresh = !append || !path.exists();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(!fresh)
            .write(true)
            .truncate(fresh)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut log = Self { out: std::io::BufWriter::new(file) };
        if fresh {
            writeln!(log.out, "{}", Self::HEADER)?;
        }
        Ok(log)
    }

    fn row(&mut self, step: usize, epoch: usize, train: Option<f32>, val: Option<f32>, ips: f64, t: f64) -> Result<()> {
        let opt = |v: Option<f32>| v.map(|v| format!("{v:.6}")).unwrap_or_default();
        writeln!(self.out, "{step},{epoch},{},{},{ips:.2},{t:.1}", opt(train), opt(val))?;
        Ok(())
    }
}

/// Sd rebuilds the teacher's pyramid from a bottleneck one stride-2 step below its deepest
/// level, doubling back up: each side must halve evenly that far, or Sd's maps come out a
/// pixel larger than the teacher's (224 px on the stride-32 taps: 7 -> 4 -> 8).
fn check_size_fits(arch: Arch, width: u32, height: u32) -> Result<()> {
    let step = 2 * arch.tap_strides()[2] as u32;
    if !width.is_multiple_of(step) || !height.is_multiple_of(step) {
        bail!(
            "input {width}x{height}: with teacher {} each side must be a multiple of {step} (its deepest \
             level is at stride {}, and Sd's bottleneck halves that once more); e.g. {}",
            arch.name(),
            step / 2,
            width.div_ceil(step) * step
        );
    }
    Ok(())
}

/// Reads the loss every this many steps: each read waits for the device, so a GPU would idle.
const LOSS_EVERY: usize = 10;

/// Trains the students and returns the kept (best validation loss) model, in inference mode.
/// With `export_only`, loads the kept model from the checkpoints instead.
pub fn train(opts: &TrainOptions) -> Result<Trained> {
    let started = Instant::now();
    let (mean, std) = opts.arch.input_stats();
    let spec = InputSpec {
        mean,
        std,
        tiles: opts.tiles,
        height: opts.height.unwrap_or(opts.size),
        ..InputSpec::imagenet(opts.size)
    }
    .with_normalize(opts.normalize);
    spec.validate()?;
    check_size_fits(opts.arch, spec.width, spec.height)?;
    let device = opts.device.clone();
    device.seed(opts.seed);
    let teacher = weights::load_teacher(opts.arch, &opts.teacher_weights, &device)?;

    let mut data = match &opts.data {
        DataSource::Folders(dirs) => data::from_folders(dirs, opts.val_fraction)?,
        DataSource::Split(file) => data::from_split(file)?,
    };
    if let Some(n) = opts.max_train_images {
        data.train.truncate(n.max(1));
    }
    let (best_path, state_path) = (opts.checkpoints.join("best.bpk"), opts.checkpoints.join("state.json"));
    if opts.export_only {
        let state = read_state(&state_path, opts, "--export-only")?;
        let students =
            load_students(Students::new(opts.arch, opts.student_e, opts.dual, &device), &best_path, "--export-only")?;
        tracing::info!(epoch = state.epoch, steps = state.steps, "exporting the kept checkpoint");
        return Ok(Trained {
            students,
            teacher,
            spec,
            train_images: data.train.len(),
            data,
            best_val_loss: state.best_val_loss,
            epochs: state.epoch,
            steps: state.steps,
            images_per_s: state.images_per_s,
            wall_s: state.fit_s,
            trained_on: state.device,
        });
    }
    tracing::info!(train = data.train.len(), val = data.val.len(), "data");
    // Teacher and validation batches have the training batch's size: fewer shapes to compile.
    let (h, w) = (spec.height as usize, spec.width as usize);
    opts.augment.check(w, h)?;
    let features = |paths: &[PathBuf], augment: Augment| -> Result<Vec<Sample>> {
        let inputs = load_inputs(paths, &spec, opts.progress)?;
        let inputs = inputs.into_iter().flat_map(|i| augment.apply(i, h, w)).collect();
        Ok(teacher_features(&teacher, inputs, &spec, &device, opts.batch, opts.progress))
    };
    // Held-out normals stay as they are: they judge the model on frames as the line sends them.
    let (train, val) = (features(&data.train, opts.augment)?, features(&data.val, Augment::None)?);

    let ad = device.clone().autodiff();
    let mut students = Students::new(opts.arch, opts.student_e, opts.dual, &ad);
    let mut state = State {
        epoch: 0,
        steps: 0,
        best_val_loss: f32::INFINITY,
        seed: opts.seed,
        images_per_s: 0.0,
        model: Some(ModelShape::of(opts)),
        fit_s: 0.0,
        device: opts.device_name.clone(),
        best_history: Vec::new(),
    };
    std::fs::create_dir_all(&opts.checkpoints).with_context(|| format!("creating {}", opts.checkpoints.display()))?;
    let last = opts.checkpoints.join("last.bpk");
    if opts.resume {
        state = read_state(&state_path, opts, "--resume")?;
        state.model = Some(ModelShape::of(opts));
        state.device = opts.device_name.clone();
        students = load_students(students, &last, "--resume")?;
        tracing::info!(epoch = state.epoch, steps = state.steps, "resumed");
    }
    let mut log = TrainLog::open(&opts.checkpoints.join("train_log.csv"), opts.resume)?;

    // Adam with the paper's betas; the optimiser state restarts on --resume (weights do not).
    let mut optim = AdamConfig::new().with_beta_1(0.5).with_beta_2(0.999).init();
    let mut rng = Rng::new(opts.seed ^ state.epoch as u64);
    let mut order: Vec<usize> = (0..train.len()).collect();
    // Whole batches only (a short last batch is dropped; the shuffle differs every epoch):
    // every distinct tensor shape costs a kernel compilation and autotuning on a GPU.
    let batch_size = opts.batch.min(train.len());
    let steps_per_epoch = train.len() / batch_size;
    let total_steps = opts.max_steps.unwrap_or(usize::MAX).min(opts.epochs * steps_per_epoch);
    let shards = opts.shards.clamp(1, batch_size);
    let loss = LossSettings { se_sd_weight: opts.se_sd_weight, sd: opts.sd_loss };
    let step_ctx = StepContext { spec: &spec, device: &ad, loss };
    tracing::info!(batch = batch_size, shards, "fitting");
    let bar = progress_bar(total_steps as u64, "train", opts.progress);
    bar.set_position(state.steps as u64);
    let (mut seen, fit_start, fit_before) = (0usize, Instant::now(), state.fit_s);
    let mut best = students.valid();
    if state.best_val_loss.is_finite() {
        best = load_students(best, &best_path, "--resume")?;
    }
    while state.epoch < opts.epochs && state.steps < total_steps {
        let (epoch_start, seen_before) = (Instant::now(), seen);
        shuffle(&mut order, &mut rng);
        for idx in order.chunks_exact(batch_size) {
            if state.steps >= total_steps {
                break;
            }
            let refs: Vec<&Sample> = idx.iter().map(|&i| &train[i]).collect();
            let read_loss = state.steps.is_multiple_of(LOSS_EVERY);
            let (grads, value) = batch_gradients(&students, &refs, shards, &step_ctx, read_loss);
            students = optim.step(opts.lr_schedule.at(opts.lr, state.steps, total_steps), students, grads);
            state.steps += 1;
            seen += idx.len();
            bar.set_position(state.steps as u64);
            let Some(value) = value else { continue };
            if !value.is_finite() {
                bail!("training diverged at step {} (loss {value}); try a lower --lr", state.steps);
            }
            let ips = seen as f64 / fit_start.elapsed().as_secs_f64();
            log.row(state.steps, state.epoch, Some(value), None, ips, fit_before + fit_start.elapsed().as_secs_f64())?;
            let msg = format!("loss {value:.4}  {ips:.2} img/s");
            // Without a terminal (CI logs, nohup) the bar is hidden: print a line now and then.
            if opts.progress && bar.is_hidden() {
                eprintln!("step {:>6}/{total_steps}  {msg}", state.steps);
            }
            bar.set_message(msg);
        }
        state.epoch += 1;
        // Throughput of this epoch's steps: on a GPU the first epoch also compiles kernels,
        // so a run-long average would understate the steady speed.
        state.images_per_s = (seen - seen_before) as f64 / epoch_start.elapsed().as_secs_f64();
        state.fit_s = fit_before + fit_start.elapsed().as_secs_f64();
        let valid = students.valid();
        let val_loss = validation_loss(&valid, &val, &spec, &device, loss, batch_size);
        log.row(state.steps, state.epoch, None, Some(val_loss), state.images_per_s, state.fit_s)?;
        log.out.flush()?;
        let kept = if val_loss < state.best_val_loss { "  (kept)" } else { "" };
        let line = format!("epoch {:>3}  step {:>6}  val loss {val_loss:.5}{kept}", state.epoch, state.steps);
        if opts.progress {
            bar.suspend(|| eprintln!("{line}"));
        }
        if val_loss < state.best_val_loss {
            state.best_val_loss = val_loss;
            best = valid;
            best.clone().save_file(&best_path).map_err(|e| anyhow::anyhow!("saving {}: {e:?}", best_path.display()))?;
        }
        state.best_history.push(state.best_val_loss);
        students.clone().save_file(&last).map_err(|e| anyhow::anyhow!("saving {}: {e:?}", last.display()))?;
        std::fs::write(&state_path, serde_json::to_string_pretty(&state)?)
            .with_context(|| format!("writing {}", state_path.display()))?;
        // The first epoch also pays for kernel compilation on a GPU: judge by the latest one.
        let epoch_s = epoch_start.elapsed().as_secs_f64();
        if let Some(budget) = opts.time_budget_s
            && fit_start.elapsed().as_secs_f64() + epoch_s > budget
        {
            bar.suspend(|| eprintln!("time budget of {budget:.0} s reached after epoch {}", state.epoch));
            break;
        }
        if let Some(gain) = plateaued(&state.best_history, opts.patience, opts.min_improvement) {
            let (p, min) = (opts.patience, 100.0 * opts.min_improvement);
            bar.suspend(|| {
                eprintln!(
                    "early stop after epoch {}: the held-out loss improved {:.2}% over the last {p} epochs (< {min}%)",
                    state.epoch,
                    100.0 * gain
                )
            });
            tracing::info!(epoch = state.epoch, gain, "early stop");
            break;
        }
    }
    bar.finish_and_clear();
    Ok(Trained {
        students: best,
        teacher,
        spec,
        data,
        best_val_loss: state.best_val_loss,
        epochs: state.epoch,
        steps: state.steps,
        images_per_s: state.images_per_s,
        train_images: train.len(),
        wall_s: started.elapsed().as_secs_f64(),
        trained_on: opts.device_name.clone(),
    })
}

/// Burn-side anomaly features of one image for parity checks: (teacher, Se, Sd) levels.
pub fn burn_features(t: &Trained, input: &[f32], device: &Device) -> [Vec<FeatureMap>; 3] {
    let x = stack(&[input], [3, t.spec.height as usize, t.spec.width as usize], device);
    let levels = |v: Vec<Tensor<4>>| v.into_iter().map(|l| to_feature_maps(l).remove(0)).collect::<Vec<_>>();
    let teacher = levels(t.teacher.forward(x.clone()));
    let f = t.students.forward(x);
    [teacher, levels(f.e), levels(f.d)]
}

/// The teacher's features of `input` averaged 2x2, as `teacher_half.onnx` computes them (the
/// half-scale bank's golden maps).
pub fn burn_half_teacher(t: &Trained, input: &[f32], device: &Device) -> Vec<FeatureMap> {
    use burn::tensor::module::avg_pool2d;
    use burn::tensor::ops::AvgPoolOptions;
    let x = stack(&[input], [3, t.spec.height as usize, t.spec.width as usize], device);
    let half = avg_pool2d(x, AvgPoolOptions::new([2, 2]));
    t.teacher.forward(half).into_iter().map(|l| to_feature_maps(l).remove(0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::{ModuleVisitor, Param};

    /// Random inputs through a random teacher: only the shapes matter here.
    fn samples(n: usize, spec: &InputSpec, device: &Device) -> Vec<Sample> {
        let teacher = Backbone::new(Arch::MobileNetV2, device);
        let mut rng = Rng::new(7);
        let len = 3 * (spec.width * spec.height) as usize;
        let inputs = (0..n).map(|_| (0..len).map(|_| rng.range(-2.0, 2.0)).collect()).collect();
        teacher_features(&teacher, inputs, spec, device, n, false)
    }

    /// Squared distance and squared norm of two gradient sets, over all parameters.
    struct Compare<'a> {
        a: &'a GradientsParams,
        b: &'a GradientsParams,
        params: usize,
        diff2: f64,
        norm2: f64,
    }

    impl ModuleVisitor for Compare<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let (Some(a), Some(b)) = (self.a.get::<D>(param.id), self.b.get::<D>(param.id)) else {
                assert!(self.a.get::<D>(param.id).is_none() && self.b.get::<D>(param.id).is_none(), "one-sided");
                return;
            };
            self.params += 1;
            self.diff2 += (a.clone() - b).powi_scalar(2).sum().into_scalar::<f32>() as f64;
            self.norm2 += a.powi_scalar(2).sum().into_scalar::<f32>() as f64;
        }
    }

    /// `|a - b| / |a|` over all of the model's gradients, and how many parameters had one.
    fn relative_gap(students: &Students, a: &GradientsParams, b: &GradientsParams) -> (f64, usize) {
        let mut c = Compare { a, b, params: 0, diff2: 0.0, norm2: 0.0 };
        students.visit(&mut c);
        assert!(c.norm2 > 0.0, "all gradients are zero");
        ((c.diff2 / c.norm2).sqrt(), c.params)
    }

    #[test]
    fn cosine_schedule_falls_from_the_rate_to_zero() {
        let c = LrSchedule::Cosine;
        assert_eq!(c.at(0.01, 0, 100), 0.01);
        assert!((c.at(0.01, 50, 100) - 0.005).abs() < 1e-12);
        assert!(c.at(0.01, 100, 100).abs() < 1e-12);
        assert_eq!(LrSchedule::Constant.at(0.01, 70, 100), 0.01);
    }

    #[test]
    fn early_stop_waits_for_patience_then_judges_relative_gain() {
        let h = [2.0, 1.5, 1.4, 1.39, 1.385];
        assert_eq!(plateaued(&h[..2], 2, 0.02), None, "not enough epochs yet");
        assert_eq!(plateaued(&h[..4], 2, 0.02), None, "1.39 is 7% below 1.5");
        assert_eq!(plateaued(&h, 3, 0.02), None, "1.385 is 7.7% below 1.5");
        let gain = plateaued(&h, 2, 0.02).expect("1.385 is 1.1% below 1.4");
        assert!((gain - (1.4 - 1.385) / 1.4).abs() < 1e-6, "{gain}");
        assert_eq!(plateaued(&h, 0, 0.02), None, "patience 0 never stops");
    }

    #[test]
    fn shards_sum_to_the_whole_batch_gradient() {
        // The batch [a, b, a, b] cut into [a, b] + [a, b]: each shard has the whole batch's
        // BatchNorm statistics (duplicates change neither mean nor variance), so the summed,
        // share-weighted shard gradients equal one pass's in exact arithmetic. In floats a
        // randomly initialised network amplifies rounding unevenly (BatchNorm over channels of
        // near-zero variance): one pass over [a, b] already differs from one over [a, b, a, b]
        // by 2e-5 to 1.5e-2 of the gradient norm, depending on the initialisation. So the
        // sharded gradients must be as close to the whole batch's as that, and equal to the
        // pass over [a, b] whose computation they repeat.
        for seed in [1, 2] {
            let device = Device::flex();
            device.seed(seed);
            let spec = InputSpec::imagenet(64);
            let s = samples(2, &spec, &device);
            let ad = device.clone().autodiff();
            let students = Students::new(Arch::MobileNetV2, StudentE::Teacher, true, &ad);
            let ctx = StepContext {
                spec: &spec,
                device: &ad,
                loss: LossSettings { se_sd_weight: 0.1, ..Default::default() },
            };
            let whole = [&s[0], &s[1], &s[0], &s[1]];
            let (one, one_loss) = batch_gradients(&students, &whole, 1, &ctx, true);
            let (two, two_loss) = batch_gradients(&students, &whole, 2, &ctx, true);
            let (half, _) = batch_gradients(&students, &whole[..2], 1, &ctx, false);
            let (one_loss, two_loss) = (one_loss.unwrap(), two_loss.unwrap());
            assert!((one_loss - two_loss).abs() < 1e-5 * one_loss, "loss {one_loss} vs {two_loss}");
            let (rounding, _) = relative_gap(&students, &one, &half);
            let (gap, params) = relative_gap(&students, &one, &two);
            assert!(params > 50, "only {params} parameters had gradients");
            assert!(gap <= 1.5 * rounding + 1e-5, "shards {gap:.2e} from the whole batch (rounding: {rounding:.2e})");
            assert!(relative_gap(&students, &half, &two).0 < 1e-5, "shards differ from the pass they repeat");
            // The comparison can fail: a batch of other images ([a, b] + [b, b]) is far off.
            let (other, _) = batch_gradients(&students, &[&s[0], &s[1], &s[1], &s[1]], 2, &ctx, false);
            let (far, _) = relative_gap(&students, &one, &other);
            assert!(far > 0.1 && far > 10.0 * rounding, "other images only {far:.2e} away (rounding {rounding:.2e})");
        }
    }
}
