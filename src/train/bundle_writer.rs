//! Trained model -> bundle directory, checked against tract before the manifest is written.
//!
//! Steps: export f32 graphs -> golden maps from the trainer's own (burn) features, and tract's
//! maps of the same inputs must match them -> threshold calibrated on held-out normals with
//! tract's scores (what the daemon will see) -> int8 QDQ graphs from activation ranges on
//! training images, checked against the same golden maps -> manifest with sha256 of every file.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;

use super::export::{self, INPUT, LEVELS};
use super::onnx::OnnxGraph;
use super::quantize;
use super::trainer::{
    LevelWeights, TrainOptions, Trained, burn_features, burn_half_teacher, load_inputs, progress_bar,
};
use crate::bundle::{
    self, Bundle, Calibration, GaussianFit, GoldenSample, GraphSet, Graphs, HalfScaleBank, ImageGaussianSpec, Info,
    Manifest, MemoryBankSpec, ScaleFusion, Teacher,
};
use crate::calibrate::calibrate;
use crate::detector::anomaly_map::{self, FeatureMap};
use crate::detector::image_gaussian::{self, Fusion, ImageGaussian};
use crate::detector::memory_bank::{Divisor, FitOptions, Hybrid, MemoryBank};
use crate::detector::{Detector, Precision, Probe, Timings};
use crate::preprocess;
use crate::tiling;
use crate::verify::check_golden;

/// Largest allowed f32 map error relative to the golden peak (burn vs tract, BN folded).
pub const TOLERANCE_F32: f32 = 1e-3;
/// Default bound for keeping the int8 graphs: on every held-out normal image, the int8 score
/// as a fraction of the int8 threshold must be within 0.1 of the f32 score as a fraction of the
/// f32 threshold. Read: int8 and f32 verdicts can only differ on frames scoring within ~10% of
/// the threshold. (A bound on raw map error, as before, said nothing a user could act on: the
/// int8 maps of a well-trained model can differ by 25% of their peak and still rank and flag
/// the same frames, since each precision has its own calibrated threshold.)
pub const INT8_BOUND: f32 = 0.1;

/// The f32 graphs of a trained model.
struct Exported {
    teacher: OnnxGraph,
    student_e: OnnxGraph,
    student_d: Option<OnnxGraph>,
}

fn export(t: &Trained, opts: &TrainOptions) -> Exported {
    let (c, s) = (&opts.arch.tap_channels()[..], &opts.arch.tap_strides()[..]);
    Exported {
        teacher: export::backbone_graph("teacher", &t.teacher, &t.spec, c, s),
        student_e: export::backbone_graph("student_e", &t.students.se, &t.spec, c, s),
        student_d: export::student_d_graph(&t.students, &t.spec, c, s),
    }
}

/// Writes the f32 graphs (the int8 set is written by [`write_int8`]).
fn write_f32_graphs(dir: &Path, g: &Exported) -> Result<GraphSet> {
    let teacher = write_graph(dir, &g.teacher, "teacher", "")?;
    let student_e = write_graph(dir, &g.student_e, "student_e", "")?;
    let student_d = g.student_d.as_ref().map(|d| write_graph(dir, d, "student_d", "")).transpose()?;
    Ok(GraphSet { teacher, student_e, student_d })
}

/// Writes `<name><suffix>.onnx` into the bundle; returns the file name.
fn write_graph(dir: &Path, graph: &OnnxGraph, name: &str, suffix: &str) -> Result<String> {
    let file = format!("{name}{suffix}.onnx");
    graph.write(&dir.join(&file)).with_context(|| format!("writing {}", dir.join(&file).display()))?;
    Ok(file)
}

/// A manifest with everything but calibration, int8 graphs and hashes filled in.
fn draft_manifest(t: &Trained, opts: &TrainOptions, f32_set: GraphSet) -> Result<Manifest> {
    let weights_sha256 = bundle::sha256_file(&opts.teacher_weights)?;
    let name = opts.out.file_name().and_then(|n| n.to_str()).unwrap_or("bundle").to_string();
    let created = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?;
    let data = match &opts.data {
        super::trainer::DataSource::Folders(d) => {
            format!("folder {}", d.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(" + "))
        }
        super::trainer::DataSource::Split(f) => format!("split {}", f.display()),
    };
    let training = BTreeMap::from([
        ("data".to_string(), data),
        ("train_images".into(), t.train_images.to_string()),
        ("val_images".into(), t.data.val.len().to_string()),
        ("epochs".into(), t.epochs.to_string()),
        ("steps".into(), t.steps.to_string()),
        ("batch".into(), opts.batch.to_string()),
        ("shards".into(), opts.shards.to_string()),
        ("student_e".into(), opts.student_e.name().into()),
        ("augment".into(), opts.augment.name().into()),
        ("sd_loss".into(), opts.sd_loss.name().into()),
        ("lr".into(), opts.lr.to_string()),
        ("lr_schedule".into(), opts.lr_schedule.name().into()),
        ("seed".into(), opts.seed.to_string()),
        ("device".into(), t.trained_on.clone()),
        ("best_val_loss".into(), format!("{:.6}", t.best_val_loss)),
        ("images_per_s".into(), format!("{:.2}", t.images_per_s)),
        ("train_wall_s".into(), format!("{:.1}", t.wall_s)),
    ]);
    Ok(Manifest {
        bundle: Info {
            format: bundle::FORMAT,
            name,
            version: "1".into(),
            created,
            trainer_version: env!("CARGO_PKG_VERSION").into(),
            method: if opts.dual { "dskd" } else { "st" }.into(),
            training,
        },
        input: t.spec.clone(),
        teacher: Teacher {
            arch: opts.arch.name().into(),
            taps: opts.arch.tap_names(),
            channels: opts.arch.tap_channels().to_vec(),
            strides: opts.arch.tap_strides().to_vec(),
            weights_sha256,
        },
        graphs: Graphs {
            input: INPUT.into(),
            levels: LEVELS.iter().map(|s| s.to_string()).collect(),
            f32: f32_set,
            int8: None,
            teacher_half: None,
        },
        map: opts.map.clone(),
        memory_bank: None,
        image_gaussian: None,
        calibration: Calibration {
            threshold: f32::INFINITY,
            target_false_alarm_rate: opts.false_alarm_rate,
            pixel_threshold: f32::INFINITY,
            int8_threshold: None,
            int8_pixel_threshold: None,
            fit: "pending".into(),
            gumbel_mu: 0.0,
            gumbel_beta: 0.0,
            normals: 0,
            normal_mean: 0.0,
            normal_std: 0.0,
            normal_max: 0.0,
            normal_flagged: 0.0,
            normal_scores: Vec::new(),
            int8_normal_scores: Vec::new(),
        },
        golden: bundle::Golden { tolerance_f32: TOLERANCE_F32, tolerance_int8: 0.0, samples: Vec::new() },
        files: BTreeMap::new(),
    })
}

/// Golden samples: the trainer's own maps of the first held-out normals, saved with the image
/// at the input's canvas size (with tiles: cut, each tile's map stitched, as the daemon does);
/// tract must reproduce them.
fn write_golden(dir: &Path, t: &Trained, opts: &TrainOptions, m: &mut Manifest) -> Result<f32> {
    std::fs::create_dir_all(dir.join("golden"))?;
    let device = opts.device.clone();
    let hybrid = Hybrid::load(&Bundle { dir: dir.to_owned(), manifest: m.clone() })?;
    let gaussian = ImageGaussian::load(&Bundle { dir: dir.to_owned(), manifest: m.clone() }, Precision::F32)?;
    for (i, path) in t.data.val.iter().take(opts.golden.max(1)).enumerate() {
        let img = preprocess::load_image(path)?;
        let rgb = preprocess::resize_rgb(&img, &t.spec.canvas_spec());
        let (h, w) = (t.spec.height as usize, t.spec.width as usize);
        let (mut maps, mut distance) = (Vec::new(), f32::NEG_INFINITY);
        for input in preprocess::to_tiles(&image::DynamicImage::ImageRgb8(rgb.clone()), &t.spec) {
            let [teacher, e, d] = burn_features(t, &input, &device);
            if let Some(g) = &gaussian {
                distance = distance.max(g.image_distance(&teacher));
            }
            let students: Vec<&[FeatureMap]> = [&e[..], &d[..]].into_iter().filter(|s| !s.is_empty()).collect();
            let map = anomaly_map::anomaly_map(&teacher, &students, &m.map, h, w);
            maps.push(match &hybrid {
                Some(hybrid) => {
                    let half = if hybrid.half.is_some() { burn_half_teacher(t, &input, &device) } else { Vec::new() };
                    hybrid.fuse(map, &teacher, &half, m.map.sigma, 1)
                }
                None => map,
            });
        }
        let map = tiling::join(maps, &t.spec.tiles, t.spec.width, t.spec.height);
        let score = anomaly_map::score(&map, m.map.score);
        let sample = GoldenSample {
            image: format!("golden/{i:02}.png"),
            map: format!("golden/{i:02}.map.f32"),
            score: gaussian.as_ref().map_or(score, |g| g.fuse(score, distance)),
        };
        rgb.save(dir.join(&sample.image)).with_context(|| format!("writing {}", dir.join(&sample.image).display()))?;
        bundle::write_map(&dir.join(&sample.map), &map)?;
        m.golden.samples.push(sample);
    }
    let bundle = Bundle { dir: dir.to_owned(), manifest: m.clone() };
    let checks = check_golden(&bundle, &Detector::load(&bundle, Precision::F32)?)?;
    let worst = checks.iter().map(|c| c.map_error).fold(0.0f32, f32::max);
    if worst > TOLERANCE_F32 {
        bail!(
            "exported f32 graphs do not reproduce the trainer's maps: error {worst:.2e} of peak > {TOLERANCE_F32:.0e}"
        );
    }
    Ok(worst)
}

/// `--level-weights spread`: each level/student map weighted by 1 over the spread of its
/// image scores (blurred and scored alone, as the whole map is) on the held-out normals, the
/// weights scaled to average 1 over the levels the map reads; none (equal) with fewer than
/// two held-out inputs. Through tract's f32 graphs, as the daemon computes the maps.
fn level_weights(dir: &Path, t: &Trained, m: &Manifest) -> Result<Vec<f32>> {
    let detector = Detector::load(&Bundle { dir: dir.to_owned(), manifest: m.clone() }, Precision::F32)?;
    let (h, w) = (t.spec.height as usize, t.spec.width as usize);
    let levels = m.teacher.channels.len();
    let students = m.graphs.f32.students();
    let mut scores = vec![Vec::new(); levels * students];
    for path in &t.data.val {
        for input in preprocess::to_tiles(&preprocess::load_image(path)?, &t.spec) {
            let f = detector.features(&input, &mut Timings::default())?;
            for (j, s) in [&f.e, &f.d].into_iter().filter(|s| !s.is_empty()).enumerate() {
                for (i, (tf, sf)) in f.teacher.iter().zip(s.iter()).enumerate() {
                    let map = anomaly_map::upsample_bilinear(&anomaly_map::cosine_distance(tf, sf), h, w);
                    let map = anomaly_map::gaussian_blur(&map, m.map.sigma);
                    scores[i * students + j].push(anomaly_map::score(&map, m.map.score));
                }
            }
        }
    }
    if scores[0].len() < 2 {
        // One held-out image has no spread to weigh by: the published sum.
        return Ok(Vec::new());
    }
    let mut weights: Vec<f32> = scores.iter().map(|v| 1.0 / Divisor::Spread.of(v)).collect();
    let read: Vec<usize> = (0..weights.len()).filter(|k| m.map.reads_level(k / students)).collect();
    let mean = read.iter().map(|&k| weights[k]).sum::<f32>() / read.len().max(1) as f32;
    weights.iter_mut().for_each(|w| *w /= mean);
    Ok(weights)
}

/// Training features the memory bank's coreset is chosen from (a random share of every
/// training image's positions beyond this).
const BANK_CANDIDATES: usize = 1_000_000;
/// Bank file names inside the bundle.
const BANK_FILE: &str = "memory_bank.safetensors";
const HALF_BANK_FILE: &str = "memory_bank_half.safetensors";
/// The half-scale teacher's graph file.
const TEACHER_HALF_FILE: &str = "teacher_half.onnx";

/// The hybrid map's memory bank (and, with `bank_scales` 2, the half-scale one): a coreset of
/// the training images' teacher features (through tract's f32 teacher, as the daemon computes
/// them), written to the bundle, and each map's divisor from its held-out normals' scores.
fn write_memory_bank(dir: &Path, t: &Trained, opts: &TrainOptions, m: &Manifest) -> Result<MemoryBankSpec> {
    let detector = Detector::load(&Bundle { dir: dir.to_owned(), manifest: m.clone() }, Precision::F32)?;
    let half = m.graphs.teacher_half.is_some();
    let fit = |half| FitOptions {
        levels: opts.memory_bank_levels.clone(),
        size: opts.memory_bank,
        candidates: BANK_CANDIDATES,
        seed: opts.seed,
        progress: opts.progress,
        augment: opts.augment,
        half,
    };
    let bank = MemoryBank::fit(&detector, &t.data.train, &fit(false))?;
    bank.write(&dir.join(BANK_FILE))?;
    let half_bank = if half { Some(MemoryBank::fit(&detector, &t.data.train, &fit(true))?) } else { None };
    if let Some(b) = &half_bank {
        b.write(&dir.join(HALF_BANK_FILE))?;
    }
    let (h, w) = (t.spec.height as usize, t.spec.width as usize);
    let (mut students, mut knn, mut knn_half) = (Vec::new(), Vec::new(), Vec::new());
    // The full-size maps, kept for the `max` scale fusion's statistics of their sum.
    let keep = half && opts.bank_scale_fusion == ScaleFusion::Max;
    let mut full_maps = Vec::new();
    let (tiles, tw, th) = (&t.spec.tiles, t.spec.width, t.spec.height);
    for path in &t.data.val {
        let (mut s, mut k, mut kh) = (Vec::new(), Vec::new(), Vec::new());
        for input in preprocess::to_tiles(&preprocess::load_image(path)?, &t.spec) {
            let f = detector.features(&input, &mut Timings::default())?;
            s.push(detector.students_map(&f.teacher, &f.e, &f.d));
            k.push(bank.map(&f.teacher, h, w, m.map.sigma, 2));
            if let Some(b) = &half_bank {
                kh.push(b.map(&f.half, h, w, m.map.sigma, 2));
            }
        }
        let (s, k) = (tiling::join(s, tiles, tw, th), tiling::join(k, tiles, tw, th));
        students.push(anomaly_map::score(&s, m.map.score));
        knn.push(anomaly_map::score(&k, m.map.score));
        if keep {
            full_maps.push((s, k));
        }
        if half {
            knn_half.push(anomaly_map::score(&tiling::join(kh, tiles, tw, th), m.map.score));
        }
    }
    let mut hybrid = Hybrid::new(bank, &students, &knn, 1.0, opts.bank_divisor);
    if let Some(b) = half_bank {
        hybrid = if keep {
            let full: Vec<f32> = full_maps
                .into_iter()
                .map(|(s, k)| anomaly_map::score(&hybrid.fuse_maps(s, &k, None), m.map.score))
                .collect();
            hybrid.with_half_max(b, &knn_half, &full)
        } else {
            hybrid.with_half(b, &knn_half, opts.bank_divisor)
        };
    }
    Ok(MemoryBankSpec {
        file: BANK_FILE.into(),
        levels: fit(false).levels,
        rows: hybrid.bank.rows(),
        dims: hybrid.bank.dims(),
        students_divisor: hybrid.students_divisor,
        knn_divisor: hybrid.knn_divisor,
        half: hybrid.half.as_ref().map(|b| HalfScaleBank {
            file: HALF_BANK_FILE.into(),
            rows: b.bank.rows(),
            dims: b.bank.dims(),
            knn_divisor: b.divisor,
            fusion: b.fusion,
            offset: b.offset,
        }),
    })
}

/// `--image-gaussian`: the Gaussian of the training images' teacher statistics (every tile's,
/// through tract's f32 teacher graph, as the daemon computes them), written to the bundle,
/// and its fusion from the held-out normals' map scores and distances at `precision` (see
/// [`ImageGaussian::fuse`]). The int8 set keeps the f32 teacher (see `write_int8`), so it sees
/// the same statistics: it reads f32's Gaussian, names f32's file, and only its fusion is its
/// own.
fn fit_image_gaussian(
    dir: &Path,
    t: &Trained,
    opts: &TrainOptions,
    m: &Manifest,
    precision: Precision,
) -> Result<GaussianFit> {
    // The map's own score: a detector without the Gaussian.
    let manifest = Manifest { image_gaussian: None, ..m.clone() };
    let detector = Detector::load(&Bundle { dir: dir.to_owned(), manifest }, precision)?;
    let fits = if precision == Precision::F32 { t.data.train.len() } else { 0 };
    let bar = progress_bar(
        (fits + t.data.val.len()) as u64,
        &format!("image gaussian ({})", precision.name()),
        opts.progress,
    );
    let (gaussian, file) = match precision {
        Precision::F32 => (fit_statistics(&detector, t, opts, &bar)?, "image_gaussian.safetensors".to_owned()),
        Precision::Int8 => {
            let spec = m.image_gaussian.as_ref().context("the int8 fusion needs the f32 image Gaussian")?;
            let read = ImageGaussian::read(&dir.join(&spec.f32.file), spec.dims, spec.statistics, Fusion::default());
            (read?, spec.f32.file.clone())
        }
    };
    let (mut scores, mut distances) = (Vec::new(), Vec::new());
    for path in &t.data.val {
        let img = preprocess::load_image(path)?;
        scores.push(detector.frame_map(&img, &mut Timings::default())?.1);
        let mut distance = f32::NEG_INFINITY;
        for input in preprocess::to_tiles(&img, &t.spec) {
            distance = distance.max(gaussian.image_distance(&detector.teacher_features(&input)?));
        }
        distances.push(distance);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let gaussian = gaussian.with_fusion(&scores, &distances);
    if precision == Precision::F32 {
        gaussian.write(&dir.join(&file))?;
    }
    Ok(GaussianFit { file, offset: gaussian.fusion.offset, scale: gaussian.fusion.scale })
}

/// The Gaussian of the training images' teacher statistics, every tile's.
fn fit_statistics(detector: &Detector, t: &Trained, opts: &TrainOptions, bar: &ProgressBar) -> Result<ImageGaussian> {
    let mut samples = Vec::new();
    for path in &t.data.train {
        for input in preprocess::to_tiles(&preprocess::load_image(path)?, &t.spec) {
            samples.push(image_gaussian::statistics(&detector.teacher_features(&input)?, opts.image_gaussian_stats));
        }
        bar.inc(1);
    }
    Ok(ImageGaussian::fit(&samples, opts.image_gaussian_stats)?)
}

/// The half-scale teacher's graph, written to the bundle; its file name.
fn write_teacher_half(dir: &Path, t: &Trained, opts: &TrainOptions) -> Result<String> {
    let (c, s) = (&opts.arch.tap_channels()[..], &opts.arch.tap_strides()[..]);
    let graph = export::scaled_backbone_graph("teacher_half", &t.teacher, &t.spec, c, s, 2);
    let path = dir.join(TEACHER_HALF_FILE);
    graph.write(&path).with_context(|| format!("writing {}", path.display()))?;
    Ok(TEACHER_HALF_FILE.into())
}

/// Calibration from the held-out normals' scores and map pixels, through tract at `precision`
/// (the scores themselves are kept in it: `normal_scores`).
fn calibrate_threshold(
    dir: &Path,
    t: &Trained,
    opts: &TrainOptions,
    m: &Manifest,
    precision: Precision,
) -> Result<Calibration> {
    let bundle = Bundle { dir: dir.to_owned(), manifest: m.clone() };
    let detector = Detector::load(&bundle, precision)?;
    let bar = progress_bar(t.data.val.len() as u64, "calibrate", opts.progress);
    let (mut scores, mut pixels) = (Vec::new(), Vec::new());
    for path in &t.data.val {
        let (map, score) = detector.frame_map(&preprocess::load_image(path)?, &mut Timings::default())?;
        scores.push(score);
        // Every 7th pixel is plenty for a quantile and keeps memory flat on big val sets.
        pixels.extend(map.data.iter().step_by(7));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(calibrate(&scores, &mut pixels, opts.false_alarm_rate)?)
}

/// Activation (min, max) by tensor name.
type Ranges = HashMap<String, (f32, f32)>;

/// Activation (min, max) of every conv input, each the mean over the calibration images of
/// that image's own min and max (not the extremes of all of them: one image's outlier would
/// otherwise spread the 256 levels over values no other image reaches), and the outputs of
/// each probed image (to feed the next graph).
fn ranges(path: &Path, g: &OnnxGraph, samples: &[Vec<Vec<f32>>]) -> Result<(Ranges, Vec<Vec<Vec<f32>>>)> {
    let names = quantize::conv_inputs(g);
    let mut wanted = names.clone();
    wanted.extend(g.outputs.iter().map(|(n, _)| n.clone()));
    let shapes: Vec<Vec<usize>> = g.inputs.iter().map(|(_, s)| s.clone()).collect();
    let probe = Probe::new(path, &shapes, &wanted)?;
    let mut acc = Ranges::new();
    let mut outputs = Vec::new();
    for inputs in samples {
        let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
        let mut values = probe.run(&refs)?;
        let outs = values.split_off(names.len());
        for (name, v) in names.iter().zip(values) {
            let (lo, hi) = v.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), x| (l.min(*x), h.max(*x)));
            let e = acc.entry(name.clone()).or_insert((0.0, 0.0));
            *e = (e.0 + lo, e.1 + hi);
        }
        outputs.push(outs);
    }
    let n = samples.len().max(1) as f32;
    acc.values_mut().for_each(|(lo, hi)| (*lo, *hi) = (*lo / n, *hi / n));
    Ok((acc, outputs))
}

/// Builds the int8 graphs and writes them; returns their worst golden map error (vs f32).
fn write_int8(dir: &Path, t: &Trained, opts: &TrainOptions, g: &Exported, m: &mut Manifest) -> Result<f32> {
    let n = opts.calibration_images.clamp(1, t.data.train.len());
    let images: Vec<Vec<Vec<f32>>> =
        load_inputs(&t.data.train[..n], &t.spec, false)?.into_iter().map(|x| vec![x]).collect();
    let (er, e_out) = ranges(&dir.join(&m.graphs.f32.student_e), &g.student_e, &images)?;
    let student_d = match (&g.student_d, &m.graphs.f32.student_d) {
        (Some(graph), Some(file)) => {
            let q = quantize::qdq(graph, &ranges(&dir.join(file), graph, &e_out)?.0);
            Some(write_graph(dir, &q, "student_d", ".int8")?)
        }
        _ => None,
    };
    // The int8 set keeps the f32 teacher. Quantized, it ran slower than f32 on both engines
    // (docs/PERFORMANCE.md: its depthwise convolutions stay float while every quantize step is
    // paid), and its features feed the memory bank and the image Gaussian unrounded this way.
    let _ = std::fs::remove_file(dir.join("teacher.int8.onnx")); // an older export's, unused now
    m.graphs.int8 = Some(GraphSet {
        teacher: m.graphs.f32.teacher.clone(),
        student_e: write_graph(dir, &quantize::qdq(&g.student_e, &er), "student_e", ".int8")?,
        student_d,
    });
    // The int8 set needs its own Gaussian fusion (see `ImageGaussianSpec`): the teacher
    // statistics, and so the Gaussian's file, are the f32 ones, but the offset and scale follow
    // the int8 students' map scores.
    let int8_fit =
        m.image_gaussian.is_some().then(|| fit_image_gaussian(dir, t, opts, m, Precision::Int8)).transpose()?;
    if let Some(g) = &mut m.image_gaussian {
        g.int8 = int8_fit;
    }
    let bundle = Bundle { dir: dir.to_owned(), manifest: m.clone() };
    let checks = check_golden(&bundle, &Detector::load(&bundle, Precision::Int8)?)?;
    Ok(checks.iter().map(|c| c.map_error).fold(0.0f32, f32::max))
}

/// Largest difference between int8 and f32 scores of the same images, each as a fraction of
/// its own precision's threshold.
pub fn verdict_gap(f32_scores: &[f32], f32_threshold: f32, int8_scores: &[f32], int8_threshold: f32) -> f32 {
    f32_scores.iter().zip(int8_scores).map(|(f, q)| (q / int8_threshold - f / f32_threshold).abs()).fold(0.0, f32::max)
}

/// Removes the int8 graphs from the bundle (files and manifest).
fn drop_int8(dir: &Path, m: &mut Manifest) {
    if let Some(set) = m.graphs.int8.take() {
        let f32_files = [Some(&m.graphs.f32.teacher), Some(&m.graphs.f32.student_e), m.graphs.f32.student_d.as_ref()];
        for file in std::iter::once(&set.teacher).chain([&set.student_e]).chain(set.student_d.as_ref()) {
            // The int8 set shares the f32 teacher.
            if !f32_files.contains(&Some(file)) {
                let _ = std::fs::remove_file(dir.join(file));
            }
        }
    }
    // The int8 fit names f32's Gaussian file (see `fit_image_gaussian`): only the fit goes.
    if let Some(g) = m.image_gaussian.as_mut() {
        g.int8 = None;
    }
    m.calibration.int8_threshold = None;
    m.calibration.int8_pixel_threshold = None;
    m.calibration.int8_normal_scores.clear();
}

/// Adds the int8 graphs when they keep f32's verdicts (see [`INT8_BOUND`]); otherwise leaves
/// them out with a warning. Never fails the bundle: the f32 graphs are already good.
fn add_int8(dir: &Path, t: &Trained, opts: &TrainOptions, g: &Exported, m: &mut Manifest) {
    let attempt = (|| -> Result<(f32, f32)> {
        let map_error = write_int8(dir, t, opts, g, m)?;
        let int8 = calibrate_threshold(dir, t, opts, m, Precision::Int8)?;
        let c = &mut m.calibration;
        let gap = verdict_gap(&c.normal_scores, c.threshold, &int8.normal_scores, int8.threshold);
        c.int8_threshold = Some(int8.threshold);
        c.int8_pixel_threshold = Some(int8.pixel_threshold);
        c.int8_normal_scores = int8.normal_scores;
        Ok((map_error, gap))
    })();
    let training = &mut m.bundle.training;
    match attempt {
        Ok((map_error, gap)) if gap <= opts.int8_bound => {
            // verify/reload re-check the int8 maps; leave room for another CPU's int8 rounding.
            m.golden.tolerance_int8 = (map_error * 1.5).max(map_error + 0.05);
            training.insert("parity_int8_max_error".into(), format!("{map_error:.3e}"));
            training.insert("int8_verdict_gap".into(), format!("{gap:.4}"));
            training.insert("int8".into(), "kept".into());
        }
        Ok((map_error, gap)) => {
            let why = format!(
                "left out: int8 scores differ from f32 by up to {gap:.3} of the threshold on held-out normals \
                 (bound {}; map error {map_error:.3} of peak)",
                opts.int8_bound
            );
            tracing::warn!(
                "int8 graphs {why}; the f32 bundle is complete. To retry, re-export with more \
                 --calibration-images or a looser --int8-bound, adding --export-only (no retraining)"
            );
            training.insert("int8".into(), why);
            training.insert("int8_verdict_gap".into(), format!("{gap:.4}"));
            drop_int8(dir, m);
        }
        Err(e) => {
            tracing::warn!("int8 graphs left out: {e:#}; the f32 bundle is complete");
            training.insert("int8".into(), format!("left out: {e:#}"));
            drop_int8(dir, m);
        }
    }
}

/// Writes the whole bundle to `opts.out` and returns its manifest.
pub fn write_bundle(t: &Trained, opts: &TrainOptions) -> Result<Manifest> {
    let dir = opts.out.as_path();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let graphs = export(t, opts);
    let f32_set = write_f32_graphs(dir, &graphs)?;
    let mut m = draft_manifest(t, opts, f32_set)?;
    if opts.level_weights == LevelWeights::Spread {
        m.map.weights = level_weights(dir, t, &m)?;
    }
    if opts.memory_bank > 0 {
        if opts.bank_scales == 2 {
            m.graphs.teacher_half = Some(write_teacher_half(dir, t, opts)?);
        }
        m.memory_bank = Some(write_memory_bank(dir, t, opts, &m)?);
    }
    if opts.image_gaussian && t.data.val.len() >= 2 {
        let f32 = fit_image_gaussian(dir, t, opts, &m, Precision::F32)?;
        let statistics = opts.image_gaussian_stats;
        let dims = image_gaussian::dims(m.teacher.channels.iter().copied(), statistics);
        m.image_gaussian = Some(ImageGaussianSpec { statistics, dims, f32, int8: None });
    }
    let f32_error = write_golden(dir, t, opts, &mut m)?;
    m.calibration = calibrate_threshold(dir, t, opts, &m, Precision::F32)?;
    m.bundle.training.insert("parity_f32_max_error".into(), format!("{f32_error:.3e}"));
    add_int8(dir, t, opts, &graphs, &mut m);
    bundle::write_manifest(dir, &mut m)?;
    Ok(m)
}
