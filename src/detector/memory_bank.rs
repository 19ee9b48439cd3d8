//! A memory bank of normal teacher features (PatchCore's idea), for the hybrid map and for the
//! ceiling diagnostic of `dskd eval --knn`.
//!
//! Embedding of one image: per position, the chosen teacher levels' features averaged over
//! their 3x3 neighbourhood, brought to the finest chosen level's grid (bilinear, half-pixel)
//! and concatenated. The bank: a greedy k-center coreset of the embeddings of normal images,
//! so every normal feature seen lies near some entry. Score of a position: the Euclidean
//! distance of its embedding to the nearest entry. Trainer and daemon run this same code on
//! their own teacher features, so the bank adds nothing to the parity tolerance but the
//! features' own differences.

use std::path::{Path, PathBuf};

use ndarray::{Array2, ArrayView2, Axis};

use super::anomaly_map::{self, FeatureMap, Map};
use super::tensor_file;
use super::{Detector, level_shapes};
use crate::augment::Augment;
use crate::bundle::{Bundle, ScaleFusion};
use crate::preprocess;
use crate::synth::Rng;

#[derive(Debug, thiserror::Error)]
pub enum MemoryBankError {
    #[error("{path}: {message}")]
    File { path: std::path::PathBuf, message: String },
    #[error("memory bank levels {levels:?}: the teacher has levels 1..={count}")]
    Level { levels: Vec<usize>, count: usize },
    #[error("the manifest's memory bank has a half-scale bank but graphs.teacher_half names no graph")]
    NoHalfTeacher,
}

/// The entries and the teacher levels their features come from.
#[derive(Debug, Clone)]
pub struct MemoryBank {
    /// 1-based teacher levels, finest first.
    pub levels: Vec<usize>,
    /// `[rows, dims]`.
    bank: Array2<f32>,
    /// `[rows, dims + 1]`: each row as `-2 b` then `|b|^2`, so that one matrix product with a
    /// query `[q, 1]` gives `|b|^2 - 2 q.b` for every entry at once (see [`Self::distances`]).
    /// A second copy of the bank in memory (12 MB for 10000 entries of 304 values), kept for
    /// the speed: the search is the largest stage of a hybrid bundle's map.
    augmented: Vec<f32>,
}

/// Positions, and bank rows, whose products are computed together (see [`MemoryBank::nearest`]):
/// a `[256, 512]` block of products (512 KB) stays in a core's L2 cache for the minimum, and a
/// frame's 16x16 grid is one query block, so the bank rows are packed once per block. Measured
/// on the bank's `[256 x 305] . [305 x 10000]` product: 16-21 ms against 41 ms for 64-position
/// blocks through ndarray.
const QUERY_BLOCK: usize = 256;
const BANK_BLOCK: usize = 512;

/// Tensor name inside the bank's safetensors file.
const TENSOR: &str = "bank";

/// Mean over the valid cells of each 3x3 neighbourhood, per channel: a position's feature
/// then also describes its surroundings.
fn avg_pool3(f: &FeatureMap) -> FeatureMap {
    let (h, w) = (f.height, f.width);
    let mut data = vec![0.0; f.data.len()];
    for (src, dst) in f.data.chunks_exact(h * w).zip(data.chunks_exact_mut(h * w)) {
        for y in 0..h {
            for x in 0..w {
                let (mut sum, mut n) = (0.0, 0.0);
                for yy in y.saturating_sub(1)..(y + 2).min(h) {
                    for xx in x.saturating_sub(1)..(x + 2).min(w) {
                        sum += src[yy * w + xx];
                        n += 1.0;
                    }
                }
                dst[y * w + x] = sum / n;
            }
        }
    }
    FeatureMap { data, ..*f }
}

/// `[positions, dims]` embedding of one image's teacher `levels` (see the module docs), with
/// the grid's height and width.
pub fn embed(levels: &[FeatureMap], chosen: &[usize]) -> (Array2<f32>, usize, usize) {
    let finest = chosen.iter().map(|&l| &levels[l - 1]).max_by_key(|f| f.height * f.width).expect("levels chosen");
    let (h, w) = (finest.height, finest.width);
    let dims: usize = chosen.iter().map(|&l| levels[l - 1].channels).sum();
    let mut out = Array2::<f32>::zeros((h * w, dims));
    let mut col = 0;
    for &l in chosen {
        let pooled = avg_pool3(&levels[l - 1]);
        for channel in pooled.data.chunks_exact(pooled.height * pooled.width) {
            let m = Map { data: channel.to_vec(), height: pooled.height, width: pooled.width };
            let up = if (m.height, m.width) == (h, w) { m } else { anomaly_map::upsample_bilinear(&m, h, w) };
            out.column_mut(col).iter_mut().zip(&up.data).for_each(|(o, v)| *o = *v);
            col += 1;
        }
    }
    (out, h, w)
}

fn sq_norms(m: ArrayView2<f32>) -> Vec<f32> {
    m.axis_iter(Axis(0)).map(|r| r.dot(&r)).collect()
}

/// `out[i * n + j] = a_i . b_j` for the `m` rows `a_i` of `a` and the `n` rows `b_j` of `b`, each
/// `k` values long (row-major): the `gemm` crate's kernels, chosen for the CPU at run time
/// (AVX-512, AVX2+FMA, NEON), about twice the speed of ndarray's on the bank's products.
fn row_products(a: &[f32], b: &[f32], k: usize, out: &mut [f32]) {
    let (m, n) = (a.len() / k, b.len() / k);
    assert!(a.len() == m * k && b.len() == n * k && out.len() == m * n, "row_products: shapes disagree");
    // SAFETY: the lengths asserted above bound every element gemm reads or writes: `a` as an
    // m x k matrix (row stride k), `b` as the k x n matrix whose column j is b's row j (column
    // stride k), `out` as m x n (row stride n). gemm neither keeps the pointers nor reads `out`
    // (read_dst = false).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// The smallest value, in 16 lanes (a plain fold is one long dependency chain the compiler
/// cannot vectorise).
fn min_of(values: &[f32]) -> f32 {
    let mut lanes = [f32::INFINITY; 16];
    let chunks = values.chunks_exact(16);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane = if *v < *lane { *v } else { *lane };
        }
    }
    rest.iter().chain(&lanes).fold(f32::INFINITY, |m, v| m.min(*v))
}

/// Squared Euclidean distance, in eight independent lanes so the compiler vectorises it.
fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for i in 0..8 {
            let d = x[i] - y[i];
            acc[i] += d * d;
        }
    }
    let (ra, rb) = (a.chunks_exact(8).remainder(), b.chunks_exact(8).remainder());
    acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| (x - y) * (x - y)).sum::<f32>()
}

/// Dimensions the coreset's distances are computed in: a random projection (PatchCore's
/// trick), so each greedy step's pass over the candidates stays in cache.
const CORESET_DIMS: usize = 64;

/// Greedy k-center: starts from a random row, then repeatedly takes the row farthest from
/// everything taken so far, with distances in a random ±1 projection to [`CORESET_DIMS`]
/// (Johnson–Lindenstrauss: distances kept up to a small factor). Returns the chosen rows.
fn coreset(x: &Array2<f32>, k: usize, rng: &mut Rng, progress: bool) -> Array2<f32> {
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(8);
    coreset_on(x, k, rng, progress, threads)
}

/// [`coreset`] on `threads` threads (the same rows whatever the count: ties go to the
/// lowest index).
fn coreset_on(x: &Array2<f32>, k: usize, rng: &mut Rng, progress: bool, threads: usize) -> Array2<f32> {
    let n = x.nrows();
    if n <= k {
        return x.clone();
    }
    let dims = x.ncols().min(CORESET_DIMS);
    let projected = if dims < x.ncols() {
        let scale = 1.0 / (dims as f32).sqrt();
        let r = Array2::from_shape_fn((x.ncols(), dims), |_| if rng.unit() < 0.5 { -scale } else { scale });
        x.dot(&r)
    } else {
        x.clone()
    };
    let flat = projected.as_standard_layout();
    let flat = flat.as_slice().expect("standard layout");
    let bar = crate::progress::progress_bar(k as u64, "coreset", progress);
    let mut nearest = vec![f32::INFINITY; n];
    let mut chosen = Vec::with_capacity(k);
    let mut next = (rng.next_u64() % n as u64) as usize;
    // Each step's pass over the candidates is split over the cores: with every training
    // position a candidate (hundreds of thousands) it is most of the export's time.
    let part = n.div_ceil(threads);
    for _ in 0..k {
        chosen.push(next);
        let c = &flat[next * dims..(next + 1) * dims];
        let farthest = |start: usize, nearest: &mut [f32]| {
            let mut far = (0, f32::NEG_INFINITY);
            let rows = flat[start * dims..].chunks_exact(dims);
            for (i, (row, d)) in rows.zip(nearest.iter_mut()).enumerate() {
                *d = d.min(sq_dist(row, c));
                if *d > far.1 {
                    far = (start + i, *d);
                }
            }
            far
        };
        next = if threads <= 1 || n < 4096 {
            farthest(0, &mut nearest).0
        } else {
            std::thread::scope(|scope| {
                let workers: Vec<_> = nearest
                    .chunks_mut(part)
                    .enumerate()
                    .map(|(t, chunk)| scope.spawn(move || farthest(t * part, chunk)))
                    .collect();
                let fars = workers.into_iter().map(|w| w.join().expect("coreset thread panicked"));
                fars.fold((0, f32::NEG_INFINITY), |a, b| if b.1 > a.1 { b } else { a }).0
            })
        };
        bar.inc(1);
    }
    bar.finish_and_clear();
    x.select(Axis(0), &chosen)
}

/// Collects embeddings of normal images as coreset candidates: a uniform random share of
/// every image's positions, so that `limit` candidates come from all images alike.
pub struct Candidates {
    levels: Vec<usize>,
    keep: f32,
    rows: Vec<f32>,
    dims: usize,
    rng: Rng,
}

/// How [`MemoryBank::fit`] builds a bank.
#[derive(Debug, Clone)]
pub struct FitOptions {
    /// 1-based teacher levels, finest first.
    pub levels: Vec<usize>,
    /// Bank entries (the coreset's size).
    pub size: usize,
    /// Training features the coreset is chosen from (a random share of every image's
    /// positions beyond this).
    pub candidates: usize,
    pub seed: u64,
    pub progress: bool,
    /// Flipped or turned copies of each image added as candidates too.
    pub augment: Augment,
    /// Entries from the half-scale teacher (`graphs.teacher_half`) instead of the teacher.
    pub half: bool,
}

impl Candidates {
    /// For `images` images of `positions` embeddings each, keeping about `limit` in all.
    pub fn new(levels: &[usize], images: usize, positions: usize, limit: usize, seed: u64) -> Self {
        let keep = (limit as f64 / (images * positions).max(1) as f64).min(1.0) as f32;
        Self { levels: levels.to_vec(), keep, rows: Vec::new(), dims: 0, rng: Rng::new(seed) }
    }

    /// Adds one normal image's teacher features.
    pub fn add(&mut self, teacher: &[FeatureMap]) {
        let (e, _, _) = embed(teacher, &self.levels);
        self.dims = e.ncols();
        for row in e.axis_iter(Axis(0)) {
            if self.keep >= 1.0 || self.rng.unit() < self.keep {
                self.rows.extend(row.iter().copied());
            }
        }
    }

    /// The bank: a coreset of at most `size` of the candidates.
    pub fn into_bank(mut self, size: usize, progress: bool) -> MemoryBank {
        let n = self.rows.len() / self.dims.max(1);
        let x = Array2::from_shape_vec((n, self.dims), std::mem::take(&mut self.rows)).expect("rows of dims");
        MemoryBank::new(self.levels, coreset(&x, size, &mut self.rng, progress))
    }
}

impl MemoryBank {
    /// A bank from normal images, their teacher features computed by `detector` (tract and
    /// the bundle's preprocessing, as the daemon computes them).
    pub fn fit(detector: &Detector, images: &[PathBuf], opts: &FitOptions) -> anyhow::Result<Self> {
        let m = detector.manifest();
        Self::check_levels(&opts.levels, m.teacher.channels.len())?;
        let shapes = level_shapes(m);
        let scale = if opts.half { 4 } else { 1 };
        let positions =
            opts.levels.iter().map(|&l| shapes[l - 1]).map(|[_, h, w]| h * w / scale).max().unwrap_or(1).max(1);
        let (h, w) = (m.input.height as usize, m.input.width as usize);
        opts.augment.check(w, h)?;
        let copies = images.len() * m.input.tiles.count() * opts.augment.copies();
        let mut candidates = Candidates::new(&opts.levels, copies, positions, opts.candidates, opts.seed);
        let bar = crate::progress::progress_bar(images.len() as u64, "memory bank", opts.progress);
        for path in images {
            for input in preprocess::to_tiles(&preprocess::load_image(path)?, &m.input) {
                for copy in opts.augment.apply(input, h, w) {
                    candidates.add(&if opts.half {
                        detector.half_teacher_features(&copy)?
                    } else {
                        detector.teacher_features(&copy)?
                    });
                }
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(candidates.into_bank(opts.size, opts.progress))
    }

    pub fn new(levels: Vec<usize>, bank: Array2<f32>) -> Self {
        let mut augmented = Vec::with_capacity(bank.nrows() * (bank.ncols() + 1));
        for (row, sq) in bank.axis_iter(Axis(0)).zip(sq_norms(bank.view())) {
            augmented.extend(row.iter().map(|v| -2.0 * v));
            augmented.push(sq);
        }
        Self { levels, bank, augmented }
    }

    pub fn rows(&self) -> usize {
        self.bank.nrows()
    }

    pub fn dims(&self) -> usize {
        self.bank.ncols()
    }

    /// Checks the levels against a teacher of `count` levels.
    pub fn check_levels(levels: &[usize], count: usize) -> Result<(), MemoryBankError> {
        if levels.is_empty() || levels.iter().any(|&l| l == 0 || l > count) {
            return Err(MemoryBankError::Level { levels: levels.to_vec(), count });
        }
        Ok(())
    }

    /// Distance of each position's embedding to its nearest entry, on the finest chosen
    /// level's grid: `|q|^2 + min_b (|b|^2 - 2 q.b)`, the cross terms as matrix products.
    /// The positions are split over `threads` threads (the daemon's latency mode has a core
    /// free once the networks are done).
    pub fn distances(&self, teacher: &[FeatureMap], threads: usize) -> Map {
        let (q, height, width) = embed(teacher, &self.levels);
        let data = if threads <= 1 {
            self.nearest(q.view())
        } else {
            let part = q.nrows().div_ceil(threads);
            std::thread::scope(|scope| {
                let workers: Vec<_> =
                    q.axis_chunks_iter(Axis(0), part).map(|rows| scope.spawn(move || self.nearest(rows))).collect();
                workers.into_iter().flat_map(|w| w.join().expect("memory bank thread panicked")).collect()
            })
        };
        Map { data, height, width }
    }

    /// Nearest-entry distances of `q`'s rows.
    fn nearest(&self, q: ArrayView2<f32>) -> Vec<f32> {
        let k = self.dims() + 1;
        // Each query with a trailing 1: its product with an augmented row is |b|^2 - 2 q.b.
        let mut queries = Vec::with_capacity(q.nrows() * k);
        for row in q.axis_iter(Axis(0)) {
            queries.extend(row.iter());
            queries.push(1.0);
        }
        let mut best = vec![f32::INFINITY; q.nrows()];
        let mut products = vec![0.0; q.nrows().min(QUERY_BLOCK) * BANK_BLOCK];
        for (block, block_best) in queries.chunks(QUERY_BLOCK * k).zip(best.chunks_mut(QUERY_BLOCK)) {
            for entries in self.augmented.chunks(BANK_BLOCK * k) {
                let n = entries.len() / k;
                let products = &mut products[..block_best.len() * n];
                row_products(block, entries, k, products);
                for (b, row) in block_best.iter_mut().zip(products.chunks_exact(n)) {
                    *b = b.min(min_of(row));
                }
            }
        }
        best.iter().zip(sq_norms(q)).map(|(b, qq)| (qq + b).max(0.0).sqrt()).collect()
    }

    /// [`Self::distances`] upsampled to `out_h x out_w` and blurred like the students' map.
    pub fn map(&self, teacher: &[FeatureMap], out_h: usize, out_w: usize, sigma: f32, threads: usize) -> Map {
        let full = anomaly_map::upsample_bilinear(&self.distances(teacher, threads), out_h, out_w);
        if sigma > 0.0 { anomaly_map::gaussian_blur(&full, sigma) } else { full }
    }

    /// Writes the entries as a safetensors file (one f32 tensor `bank`, `[rows, dims]`).
    pub fn write(&self, path: &Path) -> Result<(), MemoryBankError> {
        let values = self.bank.as_standard_layout();
        let values = values.as_slice().expect("standard layout");
        tensor_file::write(path, &[(TENSOR, vec![self.rows(), self.dims()], values)])
            .map_err(|message| MemoryBankError::File { path: path.to_owned(), message })
    }

    /// Reads a bank written by [`Self::write`], checking its shape.
    pub fn read(path: &Path, levels: Vec<usize>, rows: usize, dims: usize) -> Result<Self, MemoryBankError> {
        let err = |message: String| MemoryBankError::File { path: path.to_owned(), message };
        let [values]: [Vec<f32>; 1] =
            tensor_file::read(path, &[(TENSOR, &[rows, dims])]).map_err(err)?.try_into().expect("one asked");
        let bank = Array2::from_shape_vec((rows, dims), values).map_err(|e| err(e.to_string()))?;
        Ok(Self::new(levels, bank))
    }
}

/// The hybrid map: a bank beside the students (and optionally a second bank on the frame at
/// half size), and the divisors that make the maps weigh as asked (see [`Divisor`]; the kNN one
/// divided by its weight relative to the students').
#[derive(Debug, Clone)]
pub struct Hybrid {
    pub bank: MemoryBank,
    pub students_divisor: f32,
    pub knn_divisor: f32,
    pub half: Option<HalfBank>,
}

/// The half-scale bank, its map's divisor, and how that map joins the full-size one
/// (`max`: `max(full, half / divisor + offset)`; `sum`: `full + half / divisor`).
#[derive(Debug, Clone)]
pub struct HalfBank {
    pub bank: MemoryBank,
    pub divisor: f32,
    pub fusion: ScaleFusion,
    pub offset: f32,
}

/// What each map of the hybrid is divided by before the two are added, from its image scores
/// on held-out normals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Divisor {
    /// The mean: a typical normal image's two maps peak alike.
    Mean,
    /// The standard deviation: each map's scores on normals spread alike, so neither one's
    /// noise on normal images outweighs the other's (the default: +0.010-0.012 image AUROC
    /// and +0.013-0.014 pixel AUROC over the mean on Magnetic Tile, two seeds).
    #[default]
    Spread,
}

impl Divisor {
    /// The divisor of a set of scores (never below 1e-9).
    pub fn of(self, v: &[f32]) -> f32 {
        let n = v.len().max(1) as f32;
        let mean = v.iter().sum::<f32>() / n;
        let d = match self {
            Divisor::Mean => mean,
            Divisor::Spread => (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n).sqrt(),
        };
        d.max(1e-9)
    }
}

impl Hybrid {
    /// Divisors from the held-out normals' image scores of each map (`by` their mean or
    /// their spread); above `knn_weight` 1 the kNN map counts for more.
    pub fn new(bank: MemoryBank, students_scores: &[f32], knn_scores: &[f32], knn_weight: f32, by: Divisor) -> Self {
        let knn_divisor = by.of(knn_scores) / knn_weight.max(1e-6);
        Self { bank, students_divisor: by.of(students_scores), knn_divisor, half: None }
    }

    /// Adds the half-scale bank, its divisor from its map's held-out normal scores, joined by
    /// `sum`. For `max`, see [`Self::with_half_max`].
    pub fn with_half(self, bank: MemoryBank, scores: &[f32], by: Divisor) -> Self {
        let half = HalfBank { bank, divisor: by.of(scores), fusion: ScaleFusion::Sum, offset: 0.0 };
        Self { half: Some(half), ..self }
    }

    /// Adds the half-scale bank joined by `max`: `scores` are its map's held-out normal image
    /// scores, `full` the full-size hybrid map's on the same images; the half-scale map is
    /// brought to the full-size one's mean and spread on them.
    pub fn with_half_max(self, bank: MemoryBank, scores: &[f32], full: &[f32]) -> Self {
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len().max(1) as f32;
        let divisor = Divisor::Spread.of(scores) / Divisor::Spread.of(full);
        let offset = mean(full) - mean(scores) / divisor;
        Self { half: Some(HalfBank { bank, divisor, fusion: ScaleFusion::Max, offset }), ..self }
    }

    /// The bundle's `[memory_bank]`, checked against its manifest; `None` without one.
    pub fn load(bundle: &Bundle) -> Result<Option<Self>, MemoryBankError> {
        let Some(spec) = &bundle.manifest.memory_bank else { return Ok(None) };
        MemoryBank::check_levels(&spec.levels, bundle.manifest.teacher.channels.len())?;
        let bank = MemoryBank::read(&bundle.path(&spec.file), spec.levels.clone(), spec.rows, spec.dims)?;
        let half = match &spec.half {
            None => None,
            Some(_) if bundle.manifest.graphs.teacher_half.is_none() => {
                return Err(MemoryBankError::NoHalfTeacher);
            }
            Some(h) => Some(HalfBank {
                bank: MemoryBank::read(&bundle.path(&h.file), spec.levels.clone(), h.rows, h.dims)?,
                divisor: h.knn_divisor,
                fusion: h.fusion,
                offset: h.offset,
            }),
        };
        Ok(Some(Self { bank, students_divisor: spec.students_divisor, knn_divisor: spec.knn_divisor, half }))
    }

    /// The fused map (see [`Self::fuse_maps`]), the kNN maps from the teacher's features at
    /// full and (when the bundle has a half-scale bank) half size.
    pub fn fuse(&self, students: Map, teacher: &[FeatureMap], half: &[FeatureMap], sigma: f32, threads: usize) -> Map {
        let (h, w) = (students.height, students.width);
        let knn = self.bank.map(teacher, h, w, sigma, threads);
        let half = self.half.as_ref().map(|b| b.bank.map(half, h, w, sigma, threads));
        self.fuse_maps(students, &knn, half.as_ref())
    }

    /// `students / students_divisor + knn / knn_divisor` of maps of one size, joined with the
    /// half-scale map as [`HalfBank`] says.
    pub fn fuse_maps(&self, students: Map, knn: &Map, half: Option<&Map>) -> Map {
        let mut data: Vec<f32> = students
            .data
            .iter()
            .zip(&knn.data)
            .map(|(s, k)| s / self.students_divisor + k / self.knn_divisor)
            .collect();
        if let (Some(b), Some(m)) = (&self.half, half) {
            let values = data.iter_mut().zip(&m.data);
            match b.fusion {
                ScaleFusion::Sum => values.for_each(|(v, k)| *v += k / b.divisor),
                ScaleFusion::Max => values.for_each(|(v, k)| *v = v.max(k / b.divisor + b.offset)),
            }
        }
        Map { data, ..students }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avg_pool_keeps_constants_and_averages_edges() {
        let f = FeatureMap { data: vec![1.0; 9], channels: 1, height: 3, width: 3 };
        assert!(avg_pool3(&f).data.iter().all(|&v| (v - 1.0).abs() < 1e-6));
        let mut d = vec![0.0; 9];
        d[0] = 4.0;
        let p = avg_pool3(&FeatureMap { data: d, channels: 1, height: 3, width: 3 });
        assert!((p.data[0] - 1.0).abs() < 1e-6, "corner averages 4 cells: {}", p.data[0]);
        assert!((p.data[4] - 4.0 / 9.0).abs() < 1e-6);
        assert_eq!(p.data[8], 0.0);
    }

    #[test]
    fn divisors_are_the_normals_mean_or_spread() {
        let bank = || MemoryBank::new(vec![2, 3], Array2::zeros((1, 2)));
        let (students, knn) = ([1.0, 3.0], [10.0, 10.0, 16.0, 16.0]);
        let mean = Hybrid::new(bank(), &students, &knn, 1.0, Divisor::Mean);
        assert_eq!((mean.students_divisor, mean.knn_divisor), (2.0, 13.0));
        let spread = Hybrid::new(bank(), &students, &knn, 2.0, Divisor::Spread);
        assert_eq!((spread.students_divisor, spread.knn_divisor), (1.0, 1.5));
    }

    #[test]
    fn max_scale_fusion_brings_the_half_map_to_the_full_maps_statistics() {
        let bank = || MemoryBank::new(vec![2, 3], Array2::zeros((1, 2)));
        let hybrid = Hybrid::new(bank(), &[1.0, 3.0], &[1.0, 3.0], 1.0, Divisor::Spread);
        // Half-scale normals score 10 or 14 (mean 12, spread 2), the full map 5 or 6.
        let (half, full) = ([10.0, 14.0], [5.0, 6.0]);
        let b = hybrid.with_half_max(bank(), &half, &full).half.unwrap();
        let moved: Vec<f32> = half.iter().map(|k| k / b.divisor + b.offset).collect();
        assert_eq!(moved, vec![5.0, 6.0]);
        let hybrid = Hybrid { half: Some(b), ..Hybrid::new(bank(), &[1.0, 3.0], &[1.0, 3.0], 1.0, Divisor::Spread) };
        let flat = |v: f32| Map { data: vec![v; 4], height: 2, width: 2 };
        // Students 1 and knn 1, each divided by 1: the full map is 2; half 14 moves to 6.
        assert_eq!(hybrid.fuse_maps(flat(1.0), &flat(1.0), Some(&flat(14.0))).data, vec![6.0; 4]);
        assert_eq!(hybrid.fuse_maps(flat(1.0), &flat(1.0), Some(&flat(10.0))).data, vec![5.0; 4]);
        assert_eq!(hybrid.fuse_maps(flat(3.0), &flat(3.0), Some(&flat(10.0))).data, vec![6.0; 4]);
    }

    #[test]
    fn coreset_covers_every_cluster() {
        // Three tight clusters; a coreset of 3 must take one point of each.
        let mut v = Vec::new();
        for c in [0.0f32, 10.0, 20.0] {
            for j in 0..20 {
                v.extend([c + j as f32 * 0.01, -c]);
            }
        }
        let x = Array2::from_shape_vec((60, 2), v).unwrap();
        let core = coreset(&x, 3, &mut Rng::new(1), false);
        let mut centres: Vec<i32> = core.axis_iter(Axis(0)).map(|r| (r[0] / 10.0).round() as i32).collect();
        centres.sort();
        assert_eq!(centres, vec![0, 1, 2]);
    }

    #[test]
    fn coreset_is_the_same_on_any_number_of_threads() {
        let mut rng = Rng::new(4);
        let x = Array2::from_shape_fn((5000, 3), |_| rng.unit());
        let one = coreset_on(&x, 25, &mut Rng::new(2), false, 1);
        let three = coreset_on(&x, 25, &mut Rng::new(2), false, 3);
        assert_eq!(one, three);
    }

    #[test]
    fn embedding_concatenates_levels_on_the_finest_grid() {
        let fine = FeatureMap { data: vec![1.0; 2 * 4 * 4], channels: 2, height: 4, width: 4 };
        let coarse = FeatureMap { data: vec![3.0; 3 * 2 * 2], channels: 3, height: 2, width: 2 };
        let (e, h, w) = embed(&[fine, coarse], &[1, 2]);
        assert_eq!((e.nrows(), e.ncols(), h, w), (16, 5, 4, 4));
        assert!(e.row(5).iter().take(2).all(|&v| v == 1.0));
        assert!(e.row(5).iter().skip(2).all(|&v| (v - 3.0).abs() < 1e-6));
    }

    #[test]
    fn distances_are_zero_on_the_bank_and_grow_away_from_it_and_the_file_round_trips() {
        let f = |v: f32| FeatureMap { data: vec![v; 2 * 2 * 2], channels: 2, height: 2, width: 2 };
        let mut c = Candidates::new(&[1], 2, 4, 100, 3);
        c.add(&[f(1.0)]);
        c.add(&[f(2.0)]);
        let bank = c.into_bank(2, false);
        assert_eq!((bank.rows(), bank.dims()), (2, 2));
        assert!(bank.distances(&[f(1.0)], 1).data.iter().all(|&d| d < 1e-3));
        let far = bank.distances(&[f(5.0)], 1);
        assert_eq!(bank.distances(&[f(5.0)], 2).data, far.data, "split over threads, same distances");
        assert!(far.data.iter().all(|&d| (d - (2.0f32 * 9.0).sqrt()).abs() < 1e-3), "{:?}", far.data);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bank.safetensors");
        bank.write(&path).unwrap();
        let back = MemoryBank::read(&path, vec![1], 2, 2).unwrap();
        assert_eq!(back.distances(&[f(5.0)], 1).data, far.data);
        let err = MemoryBank::read(&path, vec![1], 3, 2).unwrap_err().to_string();
        assert!(err.contains("bank.safetensors") && err.contains("[3, 2]"), "{err}");
    }

    #[test]
    fn nearest_entries_match_a_plain_search_across_block_edges() {
        // More positions than a query block and more entries than a bank block, in odd sizes,
        // so every edge of the blocked product is crossed.
        let (positions, rows, dims) = (QUERY_BLOCK + 37, 2 * BANK_BLOCK + 21, 13);
        let mut rng = Rng::new(5);
        let bank = Array2::from_shape_fn((rows, dims), |_| rng.range(-2.0, 2.0));
        let q = Array2::from_shape_fn((positions, dims), |_| rng.range(-2.0, 2.0));
        let got = MemoryBank::new(vec![1], bank.clone()).nearest(q.view());
        for (i, d) in got.iter().enumerate() {
            let plain = bank
                .axis_iter(Axis(0))
                .map(|b| sq_dist(q.row(i).as_slice().unwrap(), b.as_slice().unwrap()))
                .fold(f32::INFINITY, f32::min)
                .sqrt();
            assert!((d - plain).abs() < 1e-4 * plain.max(1.0), "position {i}: {d} against {plain}");
        }
    }

    #[test]
    fn min_of_finds_the_smallest_in_any_lane_and_the_tail() {
        let mut v: Vec<f32> = (0..37).map(|i| 100.0 - i as f32 * 0.5).collect();
        assert_eq!(min_of(&v), 82.0, "the tail");
        v[5] = -3.0;
        assert_eq!(min_of(&v), -3.0, "a lane");
        assert_eq!(min_of(&[]), f32::INFINITY);
    }
}
