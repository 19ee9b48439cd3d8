//! The model path end to end (issue 2): a tiny bundle is trained on CPU inside the test on
//! synthetic images, exported, verified and used for inference through tract.
#![cfg(feature = "train")]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use dskd::bundle::{Bundle, ScaleFusion};
use dskd::detector::{Detector, Precision};
use dskd::preprocess::Normalize;
use dskd::synth::{self, Defect, SynthCounts};
use dskd::train::trainer::LevelWeights;
use dskd::train::{bundle_writer, trainer};

/// The fixture's size: natively 96 px, 40 images (32 train, 8 held out), 6 epochs of batch 8.
/// Under qemu (`DSKD_EMULATED`, set by `cross/build-aarch64 --test`) compute is ~100x slower,
/// so the fixture trains a smaller model through the very same steps: 64 px, 10 images
/// (8 + 2), 2 epochs.
struct Scale {
    size: u32,
    images: u64,
    epochs: usize,
}

fn emulated() -> bool {
    std::env::var_os("DSKD_EMULATED").is_some()
}

fn scale() -> Scale {
    if emulated() { Scale { size: 64, images: 10, epochs: 2 } } else { Scale { size: 96, images: 40, epochs: 6 } }
}

const BATCH: usize = 8;

/// Synthetic data and a bundle trained on it, shared by every test in this file.
struct Fixture {
    _dir: tempfile::TempDir,
    data: PathBuf,
    bundle: PathBuf,
    opts: trainer::TrainOptions,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let sc = scale();
        synth::write_dataset(&data, 3, sc.size, SynthCounts { train: sc.images, test_good: 4, test_defect: 2 })
            .unwrap();
        let bundle = dir.path().join("bundle");
        let opts = trainer::TrainOptions {
            data: trainer::DataSource::Folders(vec![data.join("train")]),
            arch: dskd::train::nets::backbone::Arch::MobileNetV2,
            teacher_weights: PathBuf::from("models/teachers/mobilenet_v2/mobilenet_v2-imagenet-features.safetensors"),
            out: bundle.clone(),
            checkpoints: dir.path().join("ckpt"),
            size: sc.size,
            height: None,
            tiles: Default::default(),
            normalize: Default::default(),
            epochs: sc.epochs,
            max_steps: None,
            max_train_images: None,
            batch: BATCH,
            shards: 2,
            lr: 0.005,
            seed: 1,
            dual: true,
            student_e: Default::default(),
            se_sd_weight: 0.0,
            map: Default::default(),
            level_weights: Default::default(),
            memory_bank: 0,
            memory_bank_levels: vec![2, 3],
            bank_divisor: Default::default(),
            bank_scales: 1,
            bank_scale_fusion: Default::default(),
            image_gaussian: false,
            image_gaussian_stats: Default::default(),
            augment: dskd::augment::Augment::None,
            sd_loss: dskd::train::loss::SdLoss::Pixel,
            lr_schedule: dskd::train::trainer::LrSchedule::Constant,
            resume: false,
            time_budget_s: None,
            patience: 0,
            min_improvement: 0.0,
            export_only: false,
            no_bundle: false,
            int8_bound: bundle_writer::INT8_BOUND,
            false_alarm_rate: 0.01,
            golden: 2,
            calibration_images: 4,
            val_fraction: 0.2,
            device: burn::tensor::Device::flex(),
            device_name: "cpu".into(),
            progress: false,
        };
        let trained = trainer::train(&opts).expect("training runs");
        bundle_writer::write_bundle(&trained, &opts).expect("bundle is written");
        Fixture { _dir: dir, data, bundle, opts }
    })
}

/// Optimiser steps of the fixture's training: 80% of the images train, the last short batch
/// is dropped.
fn fixture_steps(f: &Fixture) -> usize {
    f.opts.epochs * (scale().images as usize * 4 / 5) / BATCH
}

fn inspect(bundle: &Path, precision: Precision, image: &Path) -> dskd::detector::Inspection {
    let b = Bundle::open(bundle).unwrap();
    let det = Detector::load(&b, precision).unwrap();
    det.inspect(&dskd::preprocess::load_image(image).unwrap()).unwrap()
}

/// Exported f32 graphs reproduce the trainer's (burn) maps within 1e-3 of the map peak, and
/// int8 graphs stay within 15% of peak and keep f32's verdicts (the default bound); `verify`
/// re-checks both from the files on disk.
#[test]
fn exported_maps_match_the_trainer_f32_and_int8() {
    let f = fixture();
    let checks = dskd::verify::verify(&f.bundle).expect("bundle verifies");
    let worst = |p: Precision| checks.iter().filter(|c| c.precision == p).map(|c| c.map_error).fold(0.0f32, f32::max);
    assert_eq!(checks.len(), 4, "2 golden samples x (f32, int8)");
    assert!(worst(Precision::F32) <= 1e-3, "f32 parity {}", worst(Precision::F32));
    assert!(worst(Precision::Int8) <= 0.15, "int8 error {}", worst(Precision::Int8));
    let m = Bundle::open(&f.bundle).unwrap().manifest;
    assert!(m.calibration.threshold.is_finite() && m.calibration.threshold > 0.0);
    assert_eq!(m.bundle.training["int8"], "kept");
    let int8 = m.graphs.int8.as_ref().unwrap();
    assert_eq!(int8.teacher, m.graphs.f32.teacher, "the int8 set shares the f32 teacher");
    assert!(int8.student_e.ends_with(".int8.onnx"), "{int8:?}");
    let gap: f32 = m.bundle.training["int8_verdict_gap"].parse().unwrap();
    assert!(gap <= bundle_writer::INT8_BOUND, "verdict gap {gap}");
}

/// int8 graphs that miss their bound are left out, and the f32 bundle is still complete:
/// re-exported from the checkpoints (no training) with an impossible bound, it verifies and
/// inspects images, and the manifest says why int8 is missing.
#[test]
fn int8_missing_its_bound_leaves_a_usable_f32_bundle() {
    let f = fixture();
    let out = f.opts.out.with_file_name("f32-only");
    let opts = trainer::TrainOptions { out: out.clone(), export_only: true, int8_bound: 0.0, ..f.opts.clone() };
    let kept = trainer::train(&opts).expect("the kept checkpoint loads");
    assert_eq!(kept.steps, fixture_steps(f), "export-only trains nothing");
    let m = bundle_writer::write_bundle(&kept, &opts).expect("bundle is written without int8");
    assert!(m.graphs.int8.is_none() && m.calibration.int8_threshold.is_none());
    assert!(m.bundle.training["int8"].starts_with("left out: int8 scores differ"), "{:?}", m.bundle.training);
    assert!(!out.join("student_e.int8.onnx").exists());
    assert!(out.join("teacher.onnx").exists(), "leaving int8 out keeps the f32 teacher it shared");
    let checks = dskd::verify::verify(&out).expect("f32-only bundle verifies");
    assert!(checks.iter().all(|c| c.precision == Precision::F32) && !checks.is_empty());
    let r = inspect(&out, Precision::F32, &f.data.join("test/good/000.png"));
    assert!(r.verdict.score.is_finite());
    // Same thresholds as the bundle exported right after training: the same model.
    let first = Bundle::open(&f.bundle).unwrap().manifest;
    assert!((first.calibration.threshold - m.calibration.threshold).abs() <= 1e-5 * first.calibration.threshold);
}

/// --export-only refuses checkpoints made for another model shape, naming the file.
#[test]
fn export_only_refuses_checkpoints_of_another_shape() {
    let f = fixture();
    let opts = trainer::TrainOptions { export_only: true, size: f.opts.size + 32, ..f.opts.clone() };
    let err = trainer::train(&opts).err().expect("size mismatch refused").to_string();
    assert!(err.contains("state.json") && err.contains(&format!("{} px", f.opts.size)), "{err}");
}

/// The training log has a header, step rows with the loss and one val row per epoch.
#[test]
fn training_writes_a_loss_log() {
    let f = fixture();
    let log = std::fs::read_to_string(f.opts.checkpoints.join("train_log.csv")).unwrap();
    let mut lines = log.lines();
    assert_eq!(lines.next(), Some("step,epoch,train_loss,val_loss,images_per_s,elapsed_s"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.iter().filter(|r| !r[3].is_empty()).count(), f.opts.epochs, "one val loss per epoch");
    let losses: Vec<f32> = rows.iter().filter(|r| !r[2].is_empty()).map(|r| r[2].parse().unwrap()).collect();
    assert!(!losses.is_empty() && losses.iter().all(|l| l.is_finite() && *l > 0.0), "{losses:?}");
}

/// With the calibrated threshold, a synthetic defect raises the alarm and a normal image
/// of the same surface does not.
#[test]
fn defect_scores_above_threshold_and_normal_below() {
    if emulated() {
        eprintln!("skipped under emulation: needs the full fixture's training to tell defects apart");
        return;
    }
    let f = fixture();
    let normal = inspect(&f.bundle, Precision::F32, &f.data.join("test/good/000.png"));
    assert!(!normal.verdict.defect, "normal image flagged: {:?}", normal.verdict);
    let mut flagged = 0;
    for kind in Defect::ALL {
        let r = inspect(&f.bundle, Precision::F32, &f.data.join(format!("test/{}/000.png", kind.name())));
        assert!(
            r.verdict.score > normal.verdict.score,
            "{kind:?}: {} <= normal {}",
            r.verdict.score,
            normal.verdict.score
        );
        if r.verdict.defect {
            flagged += 1;
            assert!(!r.verdict.regions.is_empty(), "a defect verdict has regions");
        }
    }
    assert!(flagged >= 2, "only {flagged}/3 defect kinds flagged");
}

/// The manifest records the run: method, both precisions, the step count, file hashes.
#[test]
fn bundle_manifest_records_training() {
    let f = fixture();
    let m = Bundle::open(&f.bundle).unwrap().manifest;
    assert_eq!(m.bundle.method, "dskd");
    assert!(m.graphs.int8.is_some() && m.graphs.f32.student_d.is_some());
    let steps: usize = m.bundle.training["steps"].parse().unwrap();
    assert_eq!(steps, fixture_steps(f), "80% of the images / batch 8 x epochs");
    let int8 = m.graphs.int8.as_ref().unwrap();
    let mut files = vec![&m.graphs.f32.teacher, &m.graphs.f32.student_e, &int8.teacher, &int8.student_e];
    files.extend(m.graphs.f32.student_d.iter().chain(&int8.student_d));
    files.extend(m.golden.samples.iter().flat_map(|s| [&s.image, &s.map]));
    for file in files {
        assert!(m.files.contains_key(file), "{file} is hashed: {:?}", m.files.keys());
    }
    assert!(m.files.len() >= 5 + 4, "five graphs (the int8 set shares the teacher), two golden samples");
}

/// Random weights in torchvision's ResNet18 layout (the user brings real ones): every
/// conv + BN key the loader needs, plus a classifier key it must ignore.
fn random_resnet18_weights(path: &Path) {
    use safetensors::{Dtype, SafeTensors, tensor::TensorView};
    let bytes = dskd::train::weights::random_teacher_safetensors(dskd::train::nets::backbone::Arch::ResNet18, 5);
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let fc = vec![0u8; 10 * 512 * 4];
    let mut views: Vec<(String, TensorView)> = file.tensors();
    views.push(("fc.weight".into(), TensorView::new(Dtype::F32, vec![10, 512], &fc).unwrap()));
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// A ResNet18 teacher (torchvision layout) trains, exports and passes golden parity too.
#[test]
fn resnet18_teacher_trains_and_exports_with_parity() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("resnet18.safetensors");
    random_resnet18_weights(&weights);
    let data = dir.path().join("data");
    synth::write_dataset(&data, 4, 64, SynthCounts { train: 10, test_good: 0, test_defect: 0 }).unwrap();
    let opts = trainer::TrainOptions {
        data: trainer::DataSource::Folders(vec![data.join("train")]),
        arch: dskd::train::nets::backbone::Arch::ResNet18,
        teacher_weights: weights,
        out: dir.path().join("bundle"),
        checkpoints: dir.path().join("ckpt"),
        size: 64,
        height: None,
        tiles: Default::default(),
        normalize: Default::default(),
        epochs: 1,
        max_steps: Some(2),
        max_train_images: None,
        batch: 4,
        shards: 1,
        lr: 0.005,
        seed: 2,
        dual: true,
        student_e: Default::default(),
        se_sd_weight: 0.0,
        map: Default::default(),
        level_weights: Default::default(),
        memory_bank: 0,
        memory_bank_levels: vec![2, 3],
        bank_divisor: Default::default(),
        bank_scales: 1,
        bank_scale_fusion: Default::default(),
        image_gaussian: false,
        image_gaussian_stats: Default::default(),
        augment: dskd::augment::Augment::None,
        sd_loss: dskd::train::loss::SdLoss::Pixel,
        lr_schedule: dskd::train::trainer::LrSchedule::Constant,
        resume: false,
        time_budget_s: None,
        patience: 0,
        min_improvement: 0.0,
        export_only: false,
        no_bundle: false,
        int8_bound: bundle_writer::INT8_BOUND,
        false_alarm_rate: 0.01,
        golden: 1,
        calibration_images: 2,
        val_fraction: 0.2,
        device: burn::tensor::Device::flex(),
        device_name: "cpu".into(),
        progress: false,
    };
    let trained = trainer::train(&opts).expect("training runs");
    let m = bundle_writer::write_bundle(&trained, &opts).expect("bundle is written");
    assert_eq!(m.teacher.arch, "resnet18");
    assert_eq!(m.teacher.channels, vec![64, 128, 256]);
    let checks = dskd::verify::verify(&opts.out).expect("bundle verifies");
    assert!(checks.iter().all(|c| c.precision != Precision::F32 || c.map_error <= 1e-3), "{checks:?}");
}

/// A 2-step run at 64 px of `opts` (the fixture's, with the option under test), written to
/// `dir`: trained, exported, and its f32 graphs verified against the golden maps (≤ 1e-3).
fn short_bundle(dir: &Path, opts: trainer::TrainOptions) -> (trainer::TrainOptions, dskd::bundle::Manifest) {
    let opts = trainer::TrainOptions {
        size: 64,
        epochs: 1,
        max_steps: Some(2),
        out: dir.join("bundle"),
        checkpoints: dir.join("ckpt"),
        golden: 1,
        calibration_images: 2,
        ..opts
    };
    let trained = trainer::train(&opts).expect("training runs");
    let m = bundle_writer::write_bundle(&trained, &opts).expect("bundle is written");
    let checks = dskd::verify::verify(&opts.out).expect("bundle verifies");
    assert!(checks.iter().all(|c| c.precision != Precision::F32 || c.map_error <= 1e-3), "{checks:?}");
    (opts, m)
}

/// Per-image normalisation travels with the bundle: the manifest records it, the exported
/// graphs reproduce the trainer's maps through it, the detector scores a frame and the same
/// frame at another exposure alike, and a re-export that forgets the option is refused.
#[test]
fn per_image_normalisation_is_trained_exported_and_served() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let (opts, m) =
        short_bundle(dir.path(), trainer::TrainOptions { normalize: Normalize::PerImage, ..f.opts.clone() });
    assert_eq!(m.input.normalize, Normalize::PerImage);

    // The same scene brighter and with more gain: v -> 0.8 v + 30 (no clipping).
    let img = dskd::preprocess::load_image(&f.data.join("test/good/000.png")).unwrap().to_rgb8();
    let exposed = image::RgbImage::from_fn(img.width(), img.height(), |x, y| {
        image::Rgb(img.get_pixel(x, y).0.map(|v| (0.8 * v as f32 + 30.0).round() as u8))
    });
    let b = Bundle::open(&opts.out).unwrap();
    let det = Detector::load(&b, Precision::F32).unwrap();
    let score = |i: image::RgbImage| det.inspect(&image::DynamicImage::ImageRgb8(i)).unwrap().verdict.score;
    let (a, e) = (score(img), score(exposed));
    let threshold = m.calibration.threshold;
    assert!((a - e).abs() <= 0.05 * threshold, "scores {a} and {e} (threshold {threshold})");

    let forgot = trainer::TrainOptions { export_only: true, normalize: Normalize::Fixed, ..opts.clone() };
    let err = trainer::train(&forgot).err().expect("normalisation mismatch refused").to_string();
    assert!(err.contains("per_image normalisation") && err.contains("--normalize"), "{err}");
}

/// `--student-e dense`: Se built from dense convolutions trains, exports with golden parity,
/// its ONNX graph has no grouped (depthwise) convolution left, the manifest says which Se it
/// is, and a re-export that forgets the option is refused.
#[test]
fn dense_student_e_trains_and_exports_with_parity() {
    use dskd::train::nets::students::StudentE;
    let dir = tempfile::tempdir().unwrap();
    let (opts, m) =
        short_bundle(dir.path(), trainer::TrainOptions { student_e: StudentE::Dense, ..fixture().opts.clone() });
    assert_eq!(m.bundle.training.get("student_e").map(String::as_str), Some("dense"));

    let grouped = |file: &str| {
        use prost::Message;
        let bytes = std::fs::read(opts.out.join(file)).unwrap();
        let model = tract_onnx::pb::ModelProto::decode(bytes.as_slice()).unwrap();
        let graph = model.graph.unwrap();
        graph
            .node
            .iter()
            .filter(|n| n.op_type == "Conv")
            .filter(|n| n.attribute.iter().any(|a| a.name == "group" && a.i > 1))
            .count()
    };
    assert!(grouped(&m.graphs.f32.teacher) > 0, "the MobileNetV2 teacher has depthwise convolutions");
    assert_eq!(grouped(&m.graphs.f32.student_e), 0, "dense Se has no grouped convolution");

    let forgot = trainer::TrainOptions { export_only: true, student_e: StudentE::Teacher, ..opts.clone() };
    let err = trainer::train(&forgot).err().expect("a dense-Se checkpoint does not load as MobileNetV2");
    assert!(format!("{err:#}").contains("Se dense"), "{err:#}");
}

/// A tiled bundle: trained on the tiles of each frame, its golden maps are whole stitched
/// frames that tract reproduces through the daemon's own cut-and-stitch, the detector's map
/// has the canvas's size, and a re-export that forgets the tiles is refused.
#[test]
fn tiled_bundle_is_trained_exported_and_served() {
    use dskd::tiling::Tiles;
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let tiles = Tiles { across: 2, down: 2, overlap: 16 };
    let (opts, m) = short_bundle(dir.path(), trainer::TrainOptions { tiles, ..f.opts.clone() });
    assert_eq!(m.input.tiles, tiles);
    assert_eq!(m.input.canvas(), (112, 112));
    let golden = image::open(opts.out.join(&m.golden.samples[0].image)).unwrap();
    assert_eq!((golden.width(), golden.height()), (112, 112), "golden images are whole canvases");

    let bundle = dskd::bundle::Bundle::open(&opts.out).unwrap();
    let det = dskd::detector::Detector::load(&bundle, Precision::F32).unwrap();
    let img = dskd::preprocess::load_image(&f.data.join("test/good/000.png")).unwrap();
    let inspection = det.inspect(&img).unwrap();
    assert_eq!((inspection.map.width, inspection.map.height), (112, 112));

    let forgot = trainer::TrainOptions { export_only: true, tiles: Tiles::default(), ..opts.clone() };
    let err = trainer::train(&forgot).err().expect("a tiled checkpoint does not export untiled");
    assert!(format!("{err:#}").contains("tiles"), "{err:#}");
}

/// A non-square input (a camera's aspect kept, not squashed): the bundle records its width and
/// height, tract reproduces the trainer's maps at that shape, the daemon's map has it, and
/// a re-export at another shape is refused.
#[test]
fn a_non_square_input_is_trained_exported_and_served() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let (opts, m) = short_bundle(dir.path(), trainer::TrainOptions { height: Some(96), ..f.opts.clone() });
    assert_eq!((m.input.width, m.input.height), (64, 96));
    let bundle = dskd::bundle::Bundle::open(&opts.out).unwrap();
    let det = dskd::detector::Detector::load(&bundle, Precision::F32).unwrap();
    let img = dskd::preprocess::load_image(&f.data.join("test/good/000.png")).unwrap();
    let inspection = det.inspect(&img).unwrap();
    assert_eq!((inspection.map.width, inspection.map.height), (64, 96));
    let square = trainer::TrainOptions { export_only: true, height: None, ..opts.clone() };
    let err = trainer::train(&square).err().expect("a 64x96 checkpoint does not export square");
    assert!(format!("{err:#}").contains("64x96"), "{err:#}");
}

/// MobileNetV2's other tap sets load the shipped weights and export with golden parity: its
/// expansions (6x wider, same strides) and the octave-down pyramid at strides 8 / 16 / 32,
/// whose dense Se halves its grid once more to match.
#[test]
fn mobilenet_v2_tap_sets_export_with_parity() {
    use dskd::train::nets::backbone::Arch;
    use dskd::train::nets::students::StudentE;
    let cases = [
        (Arch::MobileNetV2Expanded, StudentE::Teacher, vec![144, 192, 576], vec![4, 8, 16], "features.4.conv.0"),
        (Arch::MobileNetV2S32, StudentE::Dense, vec![32, 96, 160], vec![8, 16, 32], "features.6"),
    ];
    for (arch, student_e, channels, strides, first_tap) in cases {
        let dir = tempfile::tempdir().unwrap();
        let weights = dskd::train::weights::find_shipped_teacher(arch).unwrap();
        let opts = trainer::TrainOptions { arch, student_e, teacher_weights: weights, ..fixture().opts.clone() };
        let (_, m) = short_bundle(dir.path(), opts);
        assert_eq!(m.teacher.arch, arch.name());
        assert_eq!((m.teacher.channels.clone(), m.teacher.strides.clone()), (channels, strides));
        assert_eq!(m.teacher.taps[0], first_tap);
    }
}

/// EfficientNet-Lite2 (weights not shipped: random ones in the published layout here) builds
/// the deeper, wider stages, taps blocks 3 / 6 / 14 and exports with golden parity.
#[test]
fn efficientnet_lite2_teacher_exports_with_parity() {
    use dskd::train::nets::backbone::Arch;
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("lite2.safetensors");
    std::fs::write(&weights, dskd::train::weights::random_teacher_safetensors(Arch::EfficientNetLite2, 5)).unwrap();
    let (_, m) = short_bundle(
        &dir.path().join("b"),
        trainer::TrainOptions { arch: Arch::EfficientNetLite2, teacher_weights: weights, ..fixture().opts.clone() },
    );
    assert_eq!(m.teacher.arch, "efficientnet_lite2");
    assert_eq!(m.teacher.channels, vec![24, 48, 120]);
    assert_eq!(m.teacher.taps, vec!["_blocks.3", "_blocks.6", "_blocks.14"]);
}

/// The EfficientNet-Lite0 teacher with its shipped weights: trains, exports with golden parity
/// (burn and tract agree on TF's asymmetric padding), records its taps and the input
/// normalisation its weights expect, and its graph pads stride-2 convolutions after only.
#[test]
fn efficientnet_lite0_teacher_trains_and_exports_with_parity() {
    use dskd::train::nets::backbone::Arch;
    let dir = tempfile::tempdir().unwrap();
    let weights = dskd::train::weights::find_shipped_teacher(Arch::EfficientNetLite0).unwrap();
    let (opts, m) = short_bundle(
        dir.path(),
        trainer::TrainOptions { arch: Arch::EfficientNetLite0, teacher_weights: weights, ..fixture().opts.clone() },
    );
    assert_eq!(m.teacher.arch, "efficientnet_lite0");
    assert_eq!(m.teacher.channels, vec![24, 40, 112]);
    assert_eq!(m.teacher.taps, vec!["_blocks.2", "_blocks.4", "_blocks.10"]);
    assert!((m.input.mean[0] - 127.0 / 255.0).abs() < 1e-6 && (m.input.std[0] - 128.0 / 255.0).abs() < 1e-6);

    use prost::Message;
    let bytes = std::fs::read(opts.out.join(&m.graphs.f32.teacher)).unwrap();
    let graph = tract_onnx::pb::ModelProto::decode(bytes.as_slice()).unwrap().graph.unwrap();
    let pads: Vec<Vec<i64>> = graph
        .node
        .iter()
        .filter(|n| n.op_type == "Conv")
        .filter_map(|n| n.attribute.iter().find(|a| a.name == "pads").map(|a| a.ints.clone()))
        .collect();
    assert_eq!(pads[0], vec![0, 0, 1, 1], "the stem (3x3, stride 2) pads after only");
    assert!(pads.contains(&vec![1, 1, 2, 2]), "a 5x5 stride-2 depthwise conv pads 1 before, 2 after");
}

/// Lite0 tapped one octave down (`efficientnet_lite0_s32`) loads the shipped weights through
/// block 14 and exports with golden parity beside its dense Se.
#[test]
fn efficientnet_lite0_s32_teacher_exports_with_parity() {
    use dskd::train::nets::backbone::Arch;
    use dskd::train::nets::students::StudentE;
    let dir = tempfile::tempdir().unwrap();
    let arch = Arch::EfficientNetLite0S32;
    let weights = dskd::train::weights::find_shipped_teacher(arch).unwrap();
    let opts =
        trainer::TrainOptions { arch, student_e: StudentE::Dense, teacher_weights: weights, ..fixture().opts.clone() };
    let (_, m) = short_bundle(dir.path(), opts);
    assert_eq!((m.teacher.channels.clone(), m.teacher.strides.clone()), (vec![40, 112, 192], vec![8, 16, 32]));
    assert_eq!(m.teacher.taps, vec!["_blocks.4", "_blocks.10", "_blocks.14"]);
}

/// `--memory-bank`: the hybrid map. The bank is built at export from the training images'
/// teacher features, hashed with the bundle, and the daemon's maps (students + kNN, through
/// tract) reproduce the trainer's within the f32 tolerance; int8 is judged on the hybrid map
/// too. A bank whose shape disagrees with the manifest is refused, naming the file.
#[test]
fn memory_bank_hybrid_is_exported_hashed_and_served_with_parity() {
    let dir = tempfile::tempdir().unwrap();
    let (opts, m) = short_bundle(
        dir.path(),
        trainer::TrainOptions { memory_bank: 64, memory_bank_levels: vec![2, 3], ..fixture().opts.clone() },
    );
    let spec = m.memory_bank.clone().expect("manifest has the bank");
    assert_eq!((spec.rows, spec.dims, spec.levels.clone()), (64, 32 + 96, vec![2, 3]));
    assert!(spec.students_divisor > 0.0 && spec.knn_divisor > 0.0);
    assert!(m.files.contains_key(&spec.file), "the bank file is hashed");

    // The hybrid map differs from the students' map alone: the bank does something.
    let img = fixture().data.join("test/good/000.png");
    let hybrid = inspect(&opts.out, Precision::F32, &img);
    let mut plain = Bundle::open(&opts.out).unwrap();
    plain.manifest.memory_bank = None;
    let students = Detector::load(&plain, Precision::F32).unwrap();
    let alone = students.inspect(&dskd::preprocess::load_image(&img).unwrap()).unwrap();
    let diff = hybrid.map.data.iter().zip(&alone.map.data).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff > 1e-3, "bank changed nothing ({diff})");

    let mut wrong = Bundle::open(&opts.out).unwrap();
    wrong.manifest.memory_bank.as_mut().unwrap().rows = 65;
    let err = Detector::load(&wrong, Precision::F32).err().expect("shape mismatch refused").to_string();
    assert!(err.contains(&spec.file) && err.contains("[65, 128]"), "{err}");
}

/// `--level-weights spread` (the default): the six level/student maps are weighted from the
/// held-out normals, averaging 1; the weights reach the manifest, the daemon's map uses them
/// (parity holds: `short_bundle` verifies it) and `equal` gives the unweighted map back.
#[test]
fn level_weights_come_from_held_out_normals_and_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let opts = trainer::TrainOptions { level_weights: LevelWeights::Spread, ..fixture().opts.clone() };
    let (opts, m) = short_bundle(dir.path(), opts);
    assert_eq!(m.map.weights.len(), 6, "{:?}", m.map.weights);
    let mean = m.map.weights.iter().sum::<f32>() / 6.0;
    assert!((mean - 1.0).abs() < 1e-4 && m.map.weights.iter().all(|w| *w > 0.0), "{:?}", m.map.weights);
    assert!(m.map.weights.iter().any(|w| (w - 1.0).abs() > 1e-3), "weights all 1: {:?}", m.map.weights);

    let img = fixture().data.join("test/good/000.png");
    let weighted = inspect(&opts.out, Precision::F32, &img);
    let mut equal = Bundle::open(&opts.out).unwrap();
    equal.manifest.map.weights.clear();
    let plain =
        Detector::load(&equal, Precision::F32).unwrap().inspect(&dskd::preprocess::load_image(&img).unwrap()).unwrap();
    assert_ne!(weighted.map.data, plain.map.data, "the weights changed nothing");
}

/// `--bank-scale-fusion max`: the half-scale map joins by the larger value at each pixel, so
/// the served map is never below the full-size map alone and is above it somewhere; the
/// manifest says so, and parity holds (`short_bundle` verifies it).
#[test]
fn a_half_scale_bank_can_join_by_max() {
    let dir = tempfile::tempdir().unwrap();
    let opts = trainer::TrainOptions {
        memory_bank: 64,
        bank_scales: 2,
        bank_scale_fusion: ScaleFusion::Max,
        ..fixture().opts.clone()
    };
    let (opts, m) = short_bundle(dir.path(), opts);
    let half = m.memory_bank.clone().and_then(|b| b.half).expect("manifest has the half-scale bank");
    assert_eq!(half.fusion, ScaleFusion::Max);
    assert!(half.knn_divisor > 0.0 && half.offset != 0.0, "{half:?}");

    let img = fixture().data.join("test/good/000.png");
    let both = inspect(&opts.out, Precision::F32, &img);
    let mut one = Bundle::open(&opts.out).unwrap();
    one.manifest.memory_bank.as_mut().unwrap().half = None;
    let alone =
        Detector::load(&one, Precision::F32).unwrap().inspect(&dskd::preprocess::load_image(&img).unwrap()).unwrap();
    let pairs = || both.map.data.iter().zip(&alone.map.data);
    assert!(pairs().all(|(a, b)| a >= b), "max fusion lowered the map somewhere");
    assert!(pairs().any(|(a, b)| a > b), "the half-scale map never won");
}

/// `--bank-scales 2`: a second bank scores the input averaged 2x2, through its own teacher
/// graph. Both are hashed with the bundle, the daemon's fused map (students + both kNN maps,
/// through tract) reproduces the trainer's within the f32 tolerance (`short_bundle` verifies
/// it), the half-scale map changes the map, and a manifest that names the half bank without
/// its graph is refused.
#[test]
fn a_half_scale_bank_is_exported_hashed_and_served_with_parity() {
    let dir = tempfile::tempdir().unwrap();
    let (opts, m) =
        short_bundle(dir.path(), trainer::TrainOptions { memory_bank: 64, bank_scales: 2, ..fixture().opts.clone() });
    let spec = m.memory_bank.clone().expect("manifest has the bank");
    let half = spec.half.clone().expect("manifest has the half-scale bank");
    assert_eq!((half.rows, half.dims), (spec.rows, spec.dims), "same levels, same entry count");
    assert!(half.knn_divisor > 0.0);
    let graph = m.graphs.teacher_half.clone().expect("manifest names the half-scale teacher");
    assert!(m.files.contains_key(&half.file) && m.files.contains_key(&graph), "both files are hashed");

    let img = fixture().data.join("test/good/000.png");
    let both = inspect(&opts.out, Precision::F32, &img);
    let mut one = Bundle::open(&opts.out).unwrap();
    one.manifest.memory_bank.as_mut().unwrap().half = None;
    let full_only = Detector::load(&one, Precision::F32).unwrap();
    let alone = full_only.inspect(&dskd::preprocess::load_image(&img).unwrap()).unwrap();
    let diff = both.map.data.iter().zip(&alone.map.data).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff > 1e-3, "the half-scale bank changed nothing ({diff})");

    let mut orphan = Bundle::open(&opts.out).unwrap();
    orphan.manifest.graphs.teacher_half = None;
    let err = Detector::load(&orphan, Precision::F32).err().expect("a half bank without its graph is refused");
    assert!(err.to_string().contains("teacher_half"), "{err}");
}

/// `--image-gaussian true`: the Gaussian of the training images' teacher statistics (one fit
/// per precision) is written and hashed with the bundle, the daemon's score (map peak plus the Gaussian's term,
/// through tract) reproduces the trainer's golden score within the f32 tolerance
/// (`short_bundle` verifies it), the term leaves the map alone and lifts a frame whose
/// surface as a whole is unlike the training images', and a manifest whose Gaussian does not
/// fit the teacher is refused.
#[test]
fn an_image_gaussian_is_exported_hashed_and_served_with_parity() {
    let dir = tempfile::tempdir().unwrap();
    // The int8 set kept whatever its verdict gap (bound 1), so its Gaussian fit is exercised.
    let opts = trainer::TrainOptions { image_gaussian: true, int8_bound: 1.0, ..fixture().opts.clone() };
    let (opts, m) = short_bundle(dir.path(), opts);
    let spec = m.image_gaussian.clone().expect("manifest has the image Gaussian");
    assert_eq!(spec.dims, 2 * m.teacher.channels.iter().sum::<usize>());
    assert!(spec.f32.scale > 0.0 && spec.f32.offset > 0.0, "{spec:?}");
    assert!(m.files.contains_key(&spec.f32.file), "the Gaussian's file is hashed");
    // int8 graphs bring their own fusion (their map scores sit elsewhere); none without them.
    // They keep the f32 teacher, so the Gaussian itself, and its file, are f32's.
    assert!(m.graphs.int8.is_some() && spec.int8.is_some(), "{spec:?}");
    assert!(spec.int8.iter().all(|fit| fit.file == spec.f32.file), "{spec:?}");
    assert!(!opts.out.join("image_gaussian.int8.safetensors").exists(), "no second copy of the Gaussian");

    let with = Detector::load(&Bundle::open(&opts.out).unwrap(), Precision::F32).unwrap();
    let mut plain = Bundle::open(&opts.out).unwrap();
    plain.manifest.image_gaussian = None;
    let without = Detector::load(&plain, Precision::F32).unwrap();
    let normal = dskd::preprocess::load_image(&fixture().data.join("test/good/000.png")).unwrap();
    let grey = image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(64, 64, image::Rgb([40, 40, 40])));
    let lift = |img: &image::DynamicImage| {
        let (a, b) = (with.inspect(img).unwrap(), without.inspect(img).unwrap());
        assert_eq!(a.map.data, b.map.data, "the Gaussian changed the map");
        a.verdict.score - b.verdict.score
    };
    let (normal_lift, grey_lift) = (lift(&normal), lift(&grey));
    assert!(grey_lift > normal_lift + spec.f32.scale, "a flat grey frame: {grey_lift}, a normal one: {normal_lift}");

    let mut wrong = Bundle::open(&opts.out).unwrap();
    wrong.manifest.image_gaussian.as_mut().unwrap().dims += 2;
    let err = Detector::load(&wrong, Precision::F32).err().expect("a Gaussian of the wrong size is refused");
    assert!(err.to_string().contains("dimensions"), "{err}");
}

/// `--image-gaussian-stats mean-std-max`: the Gaussian models each channel's maximum too; the
/// manifest says so (three values per channel), the daemon reproduces the trainer's golden
/// score with it (`short_bundle` verifies it), and a manifest that claims the two-statistic
/// Gaussian for those dimensions is refused.
#[test]
fn a_gaussian_of_means_spreads_and_maxima_is_served_with_parity() {
    use dskd::bundle::GaussianStatistics;
    let dir = tempfile::tempdir().unwrap();
    let opts = trainer::TrainOptions {
        image_gaussian: true,
        image_gaussian_stats: GaussianStatistics::MeanStdMax,
        ..fixture().opts.clone()
    };
    let (opts, m) = short_bundle(dir.path(), opts);
    let spec = m.image_gaussian.clone().expect("manifest has the image Gaussian");
    assert_eq!(spec.statistics, GaussianStatistics::MeanStdMax);
    assert_eq!(spec.dims, 3 * m.teacher.channels.iter().sum::<usize>());
    Detector::load(&Bundle::open(&opts.out).unwrap(), Precision::F32).unwrap();

    let mut wrong = Bundle::open(&opts.out).unwrap();
    wrong.manifest.image_gaussian.as_mut().unwrap().statistics = GaussianStatistics::MeanStd;
    let err = Detector::load(&wrong, Precision::F32).err().expect("statistics that do not fit the file are refused");
    assert!(err.to_string().contains("dimensions"), "{err}");
}
