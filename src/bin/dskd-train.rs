//! `dskd-train`: trains the DSKD students on good images and writes a model bundle.
//!
//! Exit codes: 0 bundle written, 2 error (the message names the file and the problem).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Parser;
use dskd::augment::Augment;
use dskd::bundle::{GaussianStatistics, ScaleFusion};
use dskd::detector::anomaly_map::{Fusion, MapSettings, ScoreMode};
use dskd::detector::memory_bank::Divisor;
use dskd::preprocess::Normalize;
use dskd::tiling::Tiles;
use dskd::train::loss::SdLoss;
use dskd::train::nets::backbone::Arch;
use dskd::train::nets::students::StudentE;
use dskd::train::trainer::LevelWeights;
use dskd::train::{bundle_writer, trainer, weights};

/// Train the DSKD students (or the S-T baseline) and write a model bundle.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Folder of good images (recursively); repeat for several (e.g. a review export's
    /// `good/`); every 10th, in order, is held out.
    #[arg(long, conflicts_with = "split", required_unless_present_any = ["split", "write_random_teacher"])]
    data: Vec<PathBuf>,
    /// Split file (`role<TAB>path`): `train` fits, `val` holds out, `test` is ignored.
    #[arg(long)]
    split: Option<PathBuf>,
    /// Teacher architecture (mobilenet_v2 and efficientnet_lite0 weights ship with dskd; for
    /// efficientnet_lite2 give --teacher-weights, e.g. the PyPI package's `.pth` converted by
    /// tools/pth-to-safetensors). efficientnet_lite0_s32 (the default) and efficientnet_lite0
    /// are EfficientNet-Lite0 tapped at strides 8/16/32 or 4/8/16; mobilenet_v2_s32 (the
    /// default until 2026-11-29, about 12% faster per frame), mobilenet_v2 and
    /// mobilenet_v2_expanded are MobileNetV2 (the same weights) tapped at strides 8/16/32, at
    /// 4/8/16 (the published taps), or at its 6x wider expansions (4/8/16).
    #[arg(long, default_value = "efficientnet_lite0_s32", value_parser = Arch::NAMES)]
    teacher: String,
    /// Teacher weights in torchvision's key layout: `.safetensors`, or torchvision's `.pth`
    /// [default for the mobilenet_v2 family and efficientnet_lite0: the shipped weights, found in $DSKD_TEACHERS if set, else
    /// beside the binary (teachers/, ../share/dskd/teachers/), /usr/local/share/dskd/teachers,
    /// /usr/share/dskd/teachers, the source tree it was built from, ./models/teachers].
    #[arg(long)]
    teacher_weights: Option<PathBuf>,
    /// Output bundle directory.
    #[arg(long, required_unless_present = "write_random_teacher")]
    out: Option<PathBuf>,
    /// Write random weights for --teacher in torchvision's layout to FILE (.safetensors) and
    /// exit: for timing a backbone whose pretrained weights are not at hand (e.g. a ResNet18
    /// bundle for `dskd bench`). A model on such a teacher detects nothing.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["data", "split", "out"])]
    write_random_teacher: Option<PathBuf>,
    /// Checkpoint directory [default: <out>.checkpoints].
    #[arg(long)]
    checkpoints: Option<PathBuf>,
    /// Input size in pixels: `256` (square) or `WIDTHxHEIGHT` (e.g. `512x192` for a 500x1250
    /// frame: keeps a camera's aspect instead of squashing it); with --tiles, the size of one
    /// tile. Multiples of twice the teacher's deepest stride (64 for the `_s32` teachers).
    #[arg(long, default_value = "256", value_parser = parse_size)]
    size: (u32, u32),
    /// Cut each frame into ACROSSxDOWN overlapping tiles of --size instead of squashing it to
    /// one: for small or thin defects on large frames (e.g. 4x4 for a 1024x1024 camera at 256,
    /// near native resolution). Train and serve on the same tiles; the map is stitched. Each
    /// tile costs one frame's network time.
    #[arg(long, default_value = "1x1")]
    tiles: String,
    /// Pixels neighbouring tiles share (even; the outer half of each overlap is dropped when
    /// stitching, so tile borders never reach the map).
    #[arg(long, default_value_t = 32)]
    tile_overlap: u32,
    /// Input normalisation: `fixed` (ImageNet statistics) or `per-image` (each frame's own
    /// mean and deviation per channel: blind to exposure and gain changes between shots).
    #[arg(long, default_value = "fixed", value_parser = ["fixed", "per-image"])]
    normalize: String,
    /// Most epochs; training usually ends before, at the early stop (--patience).
    #[arg(long, default_value_t = 200)]
    epochs: usize,
    /// Stop after this many optimiser steps in all.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Use only the first N training images.
    #[arg(long)]
    max_train_images: Option<usize>,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Cut each batch into N shards that run forward and backward at once on separate
    /// threads, gradients summed (data parallelism on the CPU's cores) [default on cpu: one
    /// shard per core, at least 8 images each; on cuda: 1].
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    #[arg(long, default_value_t = 0.005)]
    lr: f64,
    /// `constant`, or `cosine`: decay to 0 over --epochs (set them: the early stop may end it
    /// sooner).
    #[arg(long, value_enum, default_value_t = trainer::LrSchedule::Constant)]
    lr_schedule: trainer::LrSchedule,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// `dual` = DSKD (Se and Sd); `se` = the vanilla S-T baseline (STFPM).
    #[arg(long, default_value = "dual", value_parser = ["dual", "se"])]
    students: String,
    /// Se's architecture: `teacher` (the teacher's own, random init: the published method),
    /// `dense` (plain 3x3 convolutions of about MobileNetV2's multiply-adds: no depthwise
    /// convolutions, which tract runs slowly on x86), or `auto`: dense for the depthwise
    /// teachers (MobileNetV2, EfficientNet-Lite), the teacher's own for the ResNets.
    #[arg(long, default_value = "auto", value_parser = ["auto", "teacher", "dense"])]
    student_e: String,
    /// How the six level/student maps are fused.
    #[arg(long, default_value = "sum", value_parser = ["sum", "mean", "product", "max"])]
    fusion: String,
    /// Gaussian sigma of the map blur, in input pixels (0 = off). 2 against 4 (the default
    /// before): AUPRO +0.003 to +0.006 on both evaluation sets, image AUROC level or up;
    /// 1 scores as 2, 8 loses AUPRO (docs/RESULTS.md §0g, §0j).
    #[arg(long, default_value_t = 2.0)]
    sigma: f32,
    /// Image score: the map's max (0), or the mean of its K largest values.
    #[arg(long, default_value_t = 0)]
    score_top_k: usize,
    /// Teacher levels (1-based, finest first) whose teacher-student discrepancies enter the
    /// students' map; empty: all three. The students train on every level either way.
    #[arg(long, value_delimiter = ',', value_name = "LEVELS")]
    map_levels: Vec<usize>,
    /// How the six level/student maps are weighted in the students' map: `spread`, each
    /// divided by the spread of its image scores on the held-out normals, computed at export
    /// (also with --export-only); or `equal`, the published sum.
    #[arg(long, value_enum, default_value_t = LevelWeights::Spread)]
    level_weights: LevelWeights,
    /// Entries of a memory bank of normal teacher features whose nearest-neighbour distances
    /// are added to the students' map (the hybrid map): a greedy coreset of the training
    /// images' features (chosen from every training position, up to a million), built at
    /// export (also with --export-only). 0 = the students' map
    /// alone, the published method: about half the daemon's time per frame, and on Magnetic
    /// Tile 0.07-0.10 less image AUROC (docs/RESULTS.md).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    memory_bank: usize,
    /// Teacher levels (1-based, finest first) the memory bank's features come from.
    #[arg(long, value_delimiter = ',', default_values_t = [2usize, 3])]
    memory_bank_levels: Vec<usize>,
    /// The hybrid map: each map divided by the `spread` (standard deviation) of its held-out
    /// normals' image scores before the two are added, so neither map's noise on normal
    /// images outweighs the other's; or by their `mean` (before 2026-11-29).
    #[arg(long, value_enum, default_value_t = Divisor::Spread)]
    bank_divisor: Divisor,
    /// Input scales the memory bank scores each frame at: 1 = the input's size; 2 = also at
    /// half size (the teacher on the input averaged 2x2, with its own bank and divisor; its
    /// map added to the other two).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    bank_scales: u8,
    /// With --bank-scales 2, how the half-scale map joins the full-size map: `sum` (added,
    /// divided by the spread of its held-out normals' scores) or `max` (the larger at each
    /// pixel, the half-scale map brought to the full-size map's mean and spread on the
    /// held-out normals).
    #[arg(long, value_enum, default_value_t = ScaleFusion::Sum)]
    bank_scale_fusion: ScaleFusion,
    /// Add to the map's score the distance of the image's teacher statistics (every level's
    /// per-channel mean and standard deviation) to a Gaussian of the training images', brought
    /// to the map score's spread on the held-out normals: catches defects that change the
    /// surface as a whole (on Magnetic Tile +0.04 image AUROC; on small, faint defects
    /// −0.013 to −0.028 over four seeds: docs/RESULTS.md §0g). Built at export (also with
    /// --export-only); `false`: the map's score alone.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    image_gaussian: bool,
    /// The image Gaussian's statistics per teacher channel: `mean-std-max` (each channel's
    /// mean, spread and maximum over positions: a local extreme moves the maximum where it
    /// barely moves the mean, so fewer misses at low false-alarm rates on both evaluation
    /// sets; docs/RESULTS.md §0i, §0j), or `mean-std` (the default before).
    #[arg(long, value_enum, default_value_t = GaussianStatistics::MeanStdMax)]
    image_gaussian_stats: GaussianStatistics,
    /// Also train (and bank) flipped copies of each good image (`flip`: 4 copies), or every
    /// flip and quarter turn (`rotate`: 8). For surfaces with no up or left (tiles, sheet,
    /// fabric); leave off for objects with an orientation. An epoch passes every copy.
    #[arg(long, value_enum, default_value_t = Augment::None)]
    augment: Augment,
    /// Weight of the optional Se–Sd agreement term in the loss (0 = off).
    #[arg(long, default_value_t = 0.0)]
    se_sd_weight: f32,
    /// Sd's loss: `pixel` (cosine over channels at each position, as Se's: the published
    /// method) or `flat` (RD4AD's other form: one cosine over each image's whole maps).
    #[arg(long, value_enum, default_value_t = SdLoss::Pixel)]
    sd_loss: SdLoss,
    /// Continue from `<checkpoints>/last.bpk` (weights; the Adam state restarts).
    #[arg(long, conflicts_with = "export_only")]
    resume: bool,
    /// Stop training once the next epoch would end after this many minutes of fitting; the
    /// bundle is written from the best epoch so far.
    #[arg(long, value_name = "MINUTES")]
    time_budget: Option<f64>,
    /// Early stop: end training once the best held-out loss improved by less than
    /// --min-improvement over the last this many epochs (0 = run all --epochs). The
    /// detection figures stop improving long before the loss does (docs/RESULTS.md).
    #[arg(long, value_name = "EPOCHS", default_value_t = 3)]
    patience: usize,
    /// Relative improvement of the held-out loss over --patience epochs below which training
    /// stops (0.02 = 2%).
    #[arg(long, default_value_t = 0.02)]
    min_improvement: f32,
    /// Do not train: write the bundle from `<checkpoints>/best.bpk` (e.g. a model trained on a
    /// GPU machine, or to retry int8 with other settings). Give the same --teacher, --size,
    /// --students, --normalize and data as the training run.
    #[arg(long)]
    export_only: bool,
    /// Train and write checkpoints only, no bundle (export it later, elsewhere if need be,
    /// with --export-only).
    #[arg(long, conflicts_with = "export_only")]
    no_bundle: bool,
    /// Sign the bundle with this private key (`dskd keygen`), for daemons that list its public
    /// key in `detector.trusted_keys` (same as `dskd sign` afterwards).
    #[arg(long, value_name = "KEY", conflicts_with = "no_bundle")]
    sign_key: Option<PathBuf>,
    /// Keep the int8 graphs only if their scores, as a fraction of their threshold, stay
    /// within this of the f32 ones on every held-out normal (int8 and f32 verdicts can then
    /// differ only for frames this close to the threshold).
    #[arg(long, default_value_t = bundle_writer::INT8_BOUND)]
    int8_bound: f32,
    /// Target false-alarm rate on normal images for the threshold.
    #[arg(long, default_value_t = 0.01)]
    false_alarm_rate: f64,
    /// Number of golden parity samples in the bundle.
    #[arg(long, default_value_t = 3)]
    golden: usize,
    /// Training images used for int8 activation ranges.
    #[arg(long, default_value_t = 16)]
    calibration_images: usize,
    /// Held-out fraction when --data is a folder.
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// `cpu` (burn flex) or `cuda` (build with --features cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

/// `--size`: `N` (square) or `WxH`, each a multiple of 32 from 32.
fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let side = |v: &str| match v.trim().parse::<u32>() {
        Ok(n) if n >= 32 && n.is_multiple_of(32) => Ok(n),
        _ => Err(format!("`{v}` is not a multiple of 32 from 32")),
    };
    match s.split_once(['x', 'X']) {
        Some((w, h)) => Ok((side(w)?, side(h)?)),
        None => side(s).map(|n| (n, n)),
    }
}

fn device(name: &str) -> Result<burn::tensor::Device> {
    match name {
        "cpu" => Ok(burn::tensor::Device::flex()),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(burn::tensor::Device::cuda(0)),
        #[cfg(not(feature = "cuda"))]
        "cuda" => bail!("--device cuda needs a build with `--features cuda`"),
        other => bail!("unknown --device `{other}` (cpu or cuda)"),
    }
}

/// One shard per core on the CPU, but none smaller than 8 images: BatchNorm normalises over a
/// shard, and fewer images make its statistics noisy. A GPU runs the whole batch in one pass.
fn default_shards(device: &str, batch: usize) -> usize {
    match device {
        "cpu" => rayon::current_num_threads().min(batch / 8).max(1),
        _ => 1,
    }
}

fn run(args: Args) -> Result<()> {
    let arch = Arch::parse(&args.teacher).expect("clap checked the name");
    if let Some(file) = &args.write_random_teacher {
        let bytes = weights::random_teacher_safetensors(arch, args.seed);
        std::fs::write(file, bytes).with_context(|| format!("writing {}", file.display()))?;
        println!("random {} teacher weights (for timing only): {}", arch.name(), file.display());
        return Ok(());
    }
    let out = args.out.context("give --out BUNDLE_DIR")?;
    let teacher_weights = match (args.teacher_weights, arch) {
        (Some(w), _) => w,
        (None, arch) if weights::shipped_teacher_file(arch).is_some() => weights::find_shipped_teacher(arch)?,
        (None, _) => {
            bail!("--teacher {} needs --teacher-weights (torchvision layout, .safetensors or .pth)", args.teacher)
        }
    };
    let data = match (args.data, args.split) {
        (d, _) if !d.is_empty() => trainer::DataSource::Folders(d),
        (_, Some(s)) => trainer::DataSource::Split(s),
        (_, None) => bail!("give --data DIR or --split FILE"),
    };
    let fusion = match args.fusion.as_str() {
        "mean" => Fusion::Mean,
        "product" => Fusion::Product,
        "max" => Fusion::Max,
        _ => Fusion::Sum,
    };
    let score = if args.score_top_k == 0 { ScoreMode::Max } else { ScoreMode::TopKMean { k: args.score_top_k } };
    let checkpoints = args.checkpoints.unwrap_or_else(|| out.with_extension("checkpoints"));
    let opts = trainer::TrainOptions {
        data,
        arch,
        teacher_weights,
        out,
        checkpoints,
        size: args.size.0,
        height: Some(args.size.1).filter(|&h| h != args.size.0),
        tiles: Tiles::parse(&args.tiles, args.tile_overlap)?,
        normalize: if args.normalize == "per-image" { Normalize::PerImage } else { Normalize::Fixed },
        epochs: args.epochs,
        max_steps: args.max_steps,
        max_train_images: args.max_train_images,
        batch: args.batch.max(1),
        shards: args.shards.unwrap_or_else(|| default_shards(&args.device, args.batch)),
        lr: args.lr,
        lr_schedule: args.lr_schedule,
        seed: args.seed,
        dual: args.students == "dual",
        student_e: match args.student_e.as_str() {
            "dense" => StudentE::Dense,
            "teacher" => StudentE::Teacher,
            _ => StudentE::auto(arch),
        },
        se_sd_weight: args.se_sd_weight,
        sd_loss: args.sd_loss,
        map: MapSettings { fusion, sigma: args.sigma, score, levels: args.map_levels, weights: Vec::new() },
        level_weights: args.level_weights,
        memory_bank: args.memory_bank,
        memory_bank_levels: args.memory_bank_levels,
        bank_divisor: args.bank_divisor,
        bank_scales: args.bank_scales,
        bank_scale_fusion: args.bank_scale_fusion,
        image_gaussian: args.image_gaussian,
        image_gaussian_stats: args.image_gaussian_stats,
        augment: args.augment,
        resume: args.resume,
        time_budget_s: args.time_budget.map(|m| m * 60.0),
        patience: args.patience,
        min_improvement: args.min_improvement,
        export_only: args.export_only,
        no_bundle: args.no_bundle,
        int8_bound: args.int8_bound,
        false_alarm_rate: args.false_alarm_rate,
        golden: args.golden,
        calibration_images: args.calibration_images,
        val_fraction: args.val_fraction,
        device: device(&args.device)?,
        device_name: args.device,
        progress: !args.quiet,
    };
    opts.map.check_levels(arch.tap_channels().len()).map_err(|e| anyhow::anyhow!("--map-levels {e}"))?;
    let trained = trainer::train(&opts)?;
    if opts.no_bundle {
        println!(
            "checkpoints {}: {} train / {} val images, {} epochs, {} steps, {:.1} img/s, val loss {:.6} (no bundle: \
             export with --export-only)",
            opts.checkpoints.display(),
            trained.train_images,
            trained.data.val.len(),
            trained.epochs,
            trained.steps,
            trained.images_per_s,
            trained.best_val_loss
        );
        return Ok(());
    }
    let m = bundle_writer::write_bundle(&trained, &opts)?;
    if let Some(key) = &args.sign_key {
        let public = dskd::signing::sign(&opts.out, key).with_context(|| format!("signing {}", opts.out.display()))?;
        println!("signed with key {public}");
    }
    let t = &m.bundle.training;
    let get = |k: &str| t.get(k).map(String::as_str).unwrap_or("-");
    println!(
        "bundle {}: {} epochs, {} steps, {} img/s, val loss {}, threshold {:.4} (rate {}), parity f32 {}, int8 {} \
         (verdict gap {})",
        opts.out.display(),
        get("epochs"),
        get("steps"),
        get("images_per_s"),
        get("best_val_loss"),
        m.calibration.threshold,
        m.calibration.target_false_alarm_rate,
        get("parity_f32_max_error"),
        get("int8"),
        get("int8_verdict_gap"),
    );
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dskd-train: {}", dskd::error_line(&e));
            ExitCode::from(2)
        }
    }
}
