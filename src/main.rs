//! `dskd`: the edge daemon's command line.
//!
//! Exit codes: 0 success; 1 a check failed (`verify` parity); 2 an error (bad input,
//! unreadable file, corrupt bundle). Errors print once, as one chain, prefixed `dskd:`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use dskd::bundle::Bundle;
use dskd::detector::{Detector, Engine, Layout, Precision};
use dskd::verify::VerifyError;
use dskd::{overlay, preprocess, synth};

#[derive(Parser, Debug)]
#[command(version, about = "Unsupervised visual anomaly detection on production lines (DSKD)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon: frames in, verdicts out (stdout, MQTT).
    Run {
        /// Configuration file (see config/dskd.toml for every key).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override one key, e.g. `--set queue.capacity=4` (beats file and environment).
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Check a bundle: hashes, every graph loads in tract, golden maps reproduced; with
    /// --trusted-key, also its signature.
    Verify {
        bundle: PathBuf,
        /// Engines to check the golden maps on, comma-separated: tract, onnxruntime (a dskd
        /// built with the `onnxruntime` feature; library from $ORT_DYLIB_PATH or beside the binary).
        #[arg(long, value_delimiter = ',', default_value = "tract", value_parser = dskd::detector::Engine::NAMES)]
        engine: Vec<String>,
        /// Check tract with its convolutions channel-last (as `[detector] tract_layout =
        /// "channels-last"` runs them).
        #[arg(long)]
        channels_last: bool,
        /// A public key (hex, or a `.pub` file) the bundle must be signed by; repeatable.
        #[arg(long = "trusted-key", value_name = "KEY")]
        trusted_keys: Vec<String>,
    },
    /// Make an ed25519 key pair for signing bundles: KEY (private, mode 0600; keep it where
    /// bundles are made, not on the line) and KEY.pub (for `detector.trusted_keys`).
    Keygen { key: PathBuf },
    /// Sign a bundle (its manifest, which holds every file's sha256) with a private key from
    /// `dskd keygen`: writes BUNDLE/bundle.sig.
    Sign {
        bundle: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
    /// Inspect images: one JSON line each (score, threshold, verdict, regions, timings).
    Infer {
        #[arg(long)]
        bundle: PathBuf,
        /// Run the int8 graphs.
        #[arg(long)]
        int8: bool,
        /// Write heatmap overlays (PNG) into this folder.
        #[arg(long)]
        heatmap: Option<PathBuf>,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Time every stage of the daemon's path (decode to verdict), f32 and int8, latency and
    /// throughput modes, beside onnxruntime on the same ONNX files (tools/ort_bench.py).
    Bench {
        #[arg(long)]
        bundle: PathBuf,
        /// Timed frames per configuration (median and p99 over them).
        #[arg(long, default_value_t = 50)]
        frames: usize,
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        /// Encoded frame to time on [default: a synthetic 512x512 JPEG].
        #[arg(long)]
        image: Option<PathBuf>,
        /// Worker threads for throughput mode, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        threads: Vec<usize>,
        /// Also time every operator kind of every graph (tract).
        #[arg(long)]
        profile: bool,
        /// Split tract's matrix products over N threads (a lever to measure; the daemon keeps
        /// one thread per graph). Needs a build with `--features mm-threads`.
        #[arg(long, value_name = "N")]
        mm_threads: Option<usize>,
        /// Run the graphs' convolutions channel-last (tract's NHWC rewrite; a lever to
        /// measure: on x86 it bought nothing, aarch64 has tract's channel-last depthwise kernel).
        #[arg(long)]
        channels_last: bool,
        /// The engine dskd runs the graphs on: tract, or onnxruntime (a dskd built with the
        /// `onnxruntime` feature; library from $ORT_DYLIB_PATH or beside the binary).
        #[arg(long, default_value = "tract", value_parser = dskd::detector::Engine::NAMES)]
        engine: String,
        /// Print the report as JSON (dskd's and, unless --no-reference, onnxruntime's).
        #[arg(long)]
        json: bool,
        /// Skip the onnxruntime reference (tools/ort_bench.py in a venv made by tools/ort-venv).
        #[arg(long)]
        no_reference: bool,
    },
    /// List the cameras this machine has and the modes each offers (for `source.device`).
    Cameras,
    /// The review queue (`[review]`): frames near the threshold and defects, kept for a person.
    Review {
        #[command(subcommand)]
        action: ReviewAction,
    },
    /// Write a deterministic synthetic data set (MVTec-style folders).
    Synth {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 256)]
        size: u32,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Good training images.
        #[arg(long, default_value_t = 100)]
        train: u64,
        /// Good test images.
        #[arg(long, default_value_t = 12)]
        test_good: u64,
        /// Defective test images per kind (scratch, spot, crack).
        #[arg(long, default_value_t = 4)]
        test_defect: u64,
        /// Defect size as a factor of the default (lengths, radii and line widths; lines stay
        /// at least half a pixel wide): below 1 for a set of small defects.
        #[arg(long, default_value_t = 1.0)]
        defect_scale: f32,
        /// Defect brightness change as a factor of the default: below 1 for faint defects.
        #[arg(long, default_value_t = 1.0)]
        defect_contrast: f32,
    },
    /// Measure detection quality on a labelled test set (MVTec-style folder or split file):
    /// image/pixel AUROC, AUPRO, F1-max, the calibrated threshold's false-alarm and miss
    /// rates, region fit; a table, report.json and PNG plots.
    Eval {
        #[arg(long)]
        bundle: PathBuf,
        /// MVTec-style folder (test/<type>, ground_truth/<type>) or split file (role<TAB>path).
        #[arg(long)]
        dataset: PathBuf,
        /// Run the int8 graphs.
        #[arg(long)]
        int8: bool,
        /// Folder for report.json, scores.csv and the plots [default: none, table only].
        #[arg(long)]
        out: Option<PathBuf>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// Score with the ceiling diagnostic instead of the students: each position's distance
        /// from the teacher's features to the nearest normal ones (a coreset of this split
        /// file's `train` images; threshold from its `val` images).
        #[arg(long, value_name = "SPLIT")]
        knn: Option<PathBuf>,
        /// Teacher levels the --knn features come from, 1-based, finest first.
        #[arg(long, value_delimiter = ',', default_values_t = [2usize, 3])]
        knn_levels: Vec<usize>,
        /// --knn memory bank size (greedy coreset).
        #[arg(long, default_value_t = 10_000)]
        knn_bank: usize,
        /// --knn training features the coreset is chosen from (random subset beyond).
        #[arg(long, default_value_t = 1_000_000)]
        knn_candidates: usize,
        /// With --knn: add the students' map to the kNN map (each scaled by its mean score on
        /// the split's val normals), the hybrid of both.
        #[arg(long, requires = "knn")]
        knn_fuse: bool,
        /// With --knn-fuse: the kNN map's weight against the students' (1 = both peak alike on
        /// the val normals).
        #[arg(long, default_value_t = 1.0, requires = "knn_fuse")]
        knn_weight: f32,
        /// With --knn-fuse: divide each map by the spread (standard deviation) of its held-out
        /// normals' image scores, as bundles do, or by their mean.
        #[arg(long, value_enum, default_value_t = dskd::detector::memory_bank::Divisor::Spread, requires = "knn_fuse")]
        knn_divisor: dskd::detector::memory_bank::Divisor,
        /// With --knn: also bank flipped (or flipped and turned) copies of the train images.
        #[arg(long, value_enum, default_value_t = dskd::augment::Augment::None, requires = "knn")]
        knn_augment: dskd::augment::Augment,
    },
    /// Copy the images of a split file resized to the training size (same resize as the
    /// detector), with a new split.tsv: a training set small enough to carry to a GPU machine.
    Resize {
        #[arg(long)]
        split: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Square size in pixels.
        #[arg(long, default_value_t = 256)]
        size: u32,
        /// Roles to copy, comma-separated.
        #[arg(long, default_value = "train,val", value_delimiter = ',')]
        roles: Vec<String>,
        /// Write JPEG of this quality instead of lossless PNG.
        #[arg(long)]
        jpeg_quality: Option<u8>,
    },
}

#[derive(Subcommand, Debug)]
enum ReviewAction {
    /// Print the newest items, one JSON line each.
    List {
        #[command(flatten)]
        queue: ReviewQueue,
        #[arg(long, default_value_t = dskd::review::LIST_LIMIT)]
        limit: usize,
    },
    /// Write the items as a folder a person labels (`unlabelled/` to move into `good/` or
    /// `defect/`, overlays, index.csv); `dskd-train --data ... --data OUT/good` takes the
    /// good ones back. Labels already made are never touched.
    Export {
        #[command(flatten)]
        queue: ReviewQueue,
        #[arg(long)]
        out: PathBuf,
    },
}

/// Where the review queue is: its folder, or the daemon's configuration naming it.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
struct ReviewQueue {
    /// The queue's folder (`review.dir`).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The daemon's configuration file; its `review.dir` is used.
    #[arg(long)]
    config: Option<PathBuf>,
}

impl ReviewQueue {
    fn dir(&self) -> Result<PathBuf> {
        if let Some(d) = &self.dir {
            return Ok(d.clone());
        }
        let file = self.config.as_deref().expect("clap requires --dir or --config");
        let cfg = dskd::config::Config::load(Some(file), &[])?;
        anyhow::ensure!(!cfg.review.dir.as_os_str().is_empty(), "{}: review.dir is not set", file.display());
        Ok(cfg.review.dir)
    }
}

fn review(action: &ReviewAction) -> Result<ExitCode> {
    match action {
        ReviewAction::List { queue, limit } => {
            let dir = queue.dir()?;
            let items = dskd::review::list(&dir, *limit)
                .with_context(|| format!("reading the review queue {}", dir.display()))?;
            for item in items {
                println!("{}", serde_json::to_string(&item)?);
            }
        }
        ReviewAction::Export { queue, out } => {
            let dir = queue.dir()?;
            let done = dskd::review::export(&dir, out)
                .with_context(|| format!("exporting the review queue {} to {}", dir.display(), out.display()))?;
            println!(
                "{}: {} new frames in unlabelled/, {} exported before; label them by moving each into good/ or defect/ (see README.txt)",
                out.display(),
                done.new,
                done.already
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(dir: &Path, engines: &[String], layout: Layout) -> Result<ExitCode> {
    let mut total = 0;
    let mut names = Vec::new();
    for name in engines {
        let engine = Engine::parse(name).expect("clap checked the name").with_tract_layout(layout);
        names.push(engine.describe());
        match dskd::verify::verify_on(dir, &engine) {
            Ok(checks) => {
                for c in &checks {
                    println!("{}", serde_json::to_string(c)?);
                }
                total += checks.len();
            }
            Err(e @ VerifyError::Parity { .. }) => {
                eprintln!("dskd: {} ({name}): {e}", dir.display());
                return Ok(ExitCode::from(1));
            }
            Err(e) => return Err(e).with_context(|| format!("verifying {} on {name}", dir.display())),
        }
    }
    println!("ok: {} verified ({total} golden checks on {})", dir.display(), names.join(", "));
    Ok(ExitCode::SUCCESS)
}

fn open(bundle: &Path, int8: bool) -> Result<Detector> {
    let b = Bundle::open(bundle).with_context(|| format!("opening bundle {}", bundle.display()))?;
    let p = if int8 { Precision::Int8 } else { Precision::F32 };
    Ok(Detector::load(&b, p)?)
}

/// One image: JSON line out, overlay written if asked.
fn infer_one(det: &Detector, path: &Path, heatmap: Option<&Path>) -> Result<()> {
    let img = preprocess::load_image(path)?;
    let r = det.inspect(&img)?;
    let mut overlay_path = None;
    if let Some(dir) = heatmap {
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
        let out = dir.join(format!("{stem}.overlay.png"));
        overlay::render(&img, &r.map, &r.verdict).save(&out).with_context(|| format!("writing {}", out.display()))?;
        overlay_path = Some(out);
    }
    let line = serde_json::json!({
        "image": path,
        "score": r.verdict.score,
        "threshold": r.verdict.threshold,
        "verdict": if r.verdict.defect { "defect" } else { "ok" },
        "severity": r.verdict.severity,
        "regions": r.verdict.regions,
        "precision": det.precision(),
        "timings": r.timings,
        "overlay": overlay_path,
    });
    println!("{line}");
    Ok(())
}

fn infer(bundle: &Path, int8: bool, heatmap: Option<&Path>, images: &[PathBuf]) -> Result<ExitCode> {
    let det = open(bundle, int8)?;
    if let Some(dir) = heatmap {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A bad image is reported and skipped; the others are still inspected.
    let mut failed = 0;
    for path in images {
        if let Err(e) = infer_one(&det, path, heatmap) {
            eprintln!("dskd: {}", dskd::error_line(&e));
            failed += 1;
        }
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

/// `dskd bench`: dskd's report, then onnxruntime's on the same work, side by side.
fn bench(opts: &dskd::bench::BenchOptions, json: bool, no_reference: bool) -> Result<ExitCode> {
    let report = dskd::bench::run(opts, |what| eprintln!("measuring {what}"))?;
    let reference = if no_reference {
        None
    } else {
        eprintln!("measuring the onnxruntime reference");
        match dskd::bench::reference(opts) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("reference not run: {}", dskd::error_line(&e));
                None
            }
        }
    };
    if json {
        let mut v = serde_json::json!({ "dskd": report });
        if let Some(r) = &reference {
            v["onnxruntime"] = serde_json::json!({
                "version": r.onnxruntime, "latency": r.latency, "throughput": r.throughput, "scores": r.scores
            });
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", dskd::bench::table(&report, reference.as_ref()));
    }
    Ok(ExitCode::SUCCESS)
}

/// `dskd run`: the daemon until its source ends or SIGTERM / SIGINT.
fn run_daemon(config: Option<&Path>, overrides: &[String]) -> Result<ExitCode> {
    let overrides: Vec<(String, String)> = overrides
        .iter()
        .map(|o| o.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect::<Option<_>>()
        .context("--set takes SECTION.KEY=VALUE")?;
    let cfg = dskd::config::Config::load(config, &overrides)?;
    let source = dskd::pipeline::ConfigSource { file: config.map(Path::to_path_buf), overrides };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (hup_tx, hup_rx) = tokio::sync::mpsc::channel(4);
        let (mut term, mut hup) = (signal(SignalKind::terminate())?, signal(SignalKind::hangup())?);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => break,
                    _ = term.recv() => break,
                    _ = hup.recv() => { let _ = hup_tx.send(()).await; }
                }
            }
            tracing::info!("shutting down: draining frames and flushing the outbox");
            let _ = stop_tx.send(true);
        });
        dskd::pipeline::run(cfg, source, dskd::pipeline::Controls { shutdown: stop_rx, reload: hup_rx }).await
    })?;
    Ok(ExitCode::SUCCESS)
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run { config, overrides } => run_daemon(config.as_deref(), &overrides),
        Command::Verify { bundle, engine, channels_last, trusted_keys } => {
            if !trusted_keys.is_empty() {
                let keys = dskd::signing::trusted_keys(&trusted_keys)?;
                dskd::signing::verify(&bundle, &keys)?;
                println!("ok: {} is signed by a trusted key", bundle.display());
            }
            verify(&bundle, &engine, Layout::from_channels_last(channels_last))
        }
        Command::Keygen { key } => {
            let public = dskd::signing::generate(&key)?;
            println!("wrote {} (private) and {}: {public}", key.display(), dskd::signing::public_path(&key).display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Sign { bundle, key } => {
            let public = dskd::signing::sign(&bundle, &key)?;
            println!("signed {} with key {public}", bundle.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Infer { bundle, int8, heatmap, images } => infer(&bundle, int8, heatmap.as_deref(), &images),
        Command::Bench {
            bundle,
            frames,
            warmup,
            image,
            threads,
            profile,
            mm_threads,
            channels_last,
            engine,
            json,
            no_reference,
        } => {
            let opts = dskd::bench::BenchOptions {
                bundle,
                frames,
                warmup,
                image,
                threads,
                profile,
                mm_threads,
                channels_last,
                engine: dskd::detector::Engine::parse(&engine).expect("clap checked the name"),
            };
            bench(&opts, json, no_reference)
        }
        Command::Cameras => cameras(),
        Command::Review { action } => review(&action),
        Command::Eval {
            bundle,
            dataset,
            int8,
            out,
            quiet,
            knn,
            knn_levels,
            knn_bank,
            knn_candidates,
            knn_fuse,
            knn_weight,
            knn_divisor,
            knn_augment,
        } => {
            let precision = if int8 { Precision::Int8 } else { Precision::F32 };
            let knn = knn.map(|split| dskd::eval::knn::KnnOptions {
                split,
                levels: knn_levels,
                bank: knn_bank,
                candidates: knn_candidates,
                seed: 42,
                progress: !quiet,
                fuse: knn_fuse,
                knn_weight,
                divisor: knn_divisor,
                augment: knn_augment,
            });
            let opts = dskd::eval::EvalOptions { bundle, dataset, precision, progress: !quiet, knn };
            let (report, scorer) = dskd::eval::evaluate(&opts)?;
            println!("scorer: {}", report.scorer);
            print!("{}", dskd::eval::table(&report));
            for r in &report.region_rules {
                let pct = |v: Option<f64>| v.map(|v| format!("{:.1}%", 100.0 * v)).unwrap_or_else(|| "-".into());
                println!(
                    "regions at {} ({:.3}): box precision {}, defect boxed {}, image boxed {}",
                    r.rule,
                    r.pixel_threshold,
                    pct(r.box_precision),
                    pct(r.box_recall),
                    pct(r.box_area_share)
                );
            }
            println!(
                "{} images in {:.1} s ({:.1} ms each); threshold {:.4} (calibrated for {:.1}% false alarms)",
                report.images.len(),
                report.wall_s,
                report.ms_per_image,
                report.threshold,
                100.0 * report.target_false_alarm_rate
            );
            if let Some(out) = out {
                for f in dskd::eval::write_outputs(&report, scorer.as_ref(), &out)? {
                    println!("wrote {}", f.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Resize { split, out, size, roles, jpeg_quality } => {
            let opts = dskd::dataset::ResizeOptions { width: size, height: size, roles, jpeg_quality };
            let n = dskd::dataset::resize_split(&split, &out, &opts)?;
            println!("wrote {n} images and {}", out.join("split.tsv").display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Synth { out, size, seed, train, test_good, test_defect, defect_scale, defect_contrast } => {
            let counts = synth::SynthCounts { train, test_good, test_defect };
            let look = synth::DefectLook { scale: defect_scale, contrast: defect_contrast };
            let n = synth::write_dataset_with(&out, seed, size, counts, look)
                .with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {n} images under {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn cameras() -> Result<ExitCode> {
    // Each kind is listed on its own: a build without one of them still lists the other.
    match dskd::source::camera::list() {
        Ok(found) if found.is_empty() => {
            println!("V4L2/UVC: none found (devices /dev/video*; is the user in the `video` group?)")
        }
        Ok(found) => {
            println!("V4L2/UVC ([source] kind = \"camera\", device = the index or name):");
            for (index, name, modes) in found {
                println!("  {index}: {name}");
                for m in modes {
                    println!("      {m}");
                }
            }
        }
        Err(e) => println!("V4L2/UVC: {e}"),
    }
    match dskd::source::genicam::list() {
        Ok(found) if found.is_empty() => println!("GenICam: none found (GigE cameras must be on a reachable subnet)"),
        Ok(found) => {
            println!("GenICam ([source] kind = \"genicam\", device = the index, serial, address or name):");
            for (i, d) in found.iter().enumerate() {
                println!("  {i}: {d}");
            }
        }
        Err(e) => println!("GenICam: {e}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `RUST_LOG` if set; else info, with the embedded broker's per-connection chatter silenced.
fn log_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=off"))
}

fn main() -> ExitCode {
    // Colour only on a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(log_filter()).with_writer(std::io::stderr).with_ansi(ansi).init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dskd: {}", dskd::error_line(&e));
            ExitCode::from(2)
        }
    }
}
