//! `dskd bench`: the benchmark of record for the daemon's path, frame bytes to verdict.
//!
//! - Latency mode: one frame at a time, every stage timed (decode, resize + normalise, T, Se,
//!   Sd, T ∥ (Se → Sd), map fusion + blur, verdict + regions, total). With 2 threads the teacher
//!   runs beside the student chain (the daemon's way); with 1 everything runs on one thread.
//! - Throughput mode: N worker threads, one frame each at a time, frames/s over the run.
//! - Per graph: multiply-adds (tract's cost model), achieved GFLOP/s and its share of one
//!   core's FP32 peak, read off the CPU's own flags.
//!
//! Median and p99 over `frames` frames after `warmup` frames. The onnxruntime reference
//! (`tools/ort_bench.py`) does the same work on the same files and prints the same fields.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::bundle::Bundle;
use crate::detector::profile::GraphProfile;
use crate::detector::{Detector, Engine, Layout, Precision, Timings, ms};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub bundle: PathBuf,
    /// Timed frames per configuration.
    pub frames: usize,
    pub warmup: usize,
    /// Encoded frame (JPEG, PNG, ...) to time on; default: a synthetic 512² JPEG.
    pub image: Option<PathBuf>,
    /// Thread counts for throughput mode (latency mode uses 1 and 2).
    pub threads: Vec<usize>,
    /// Also time every operator kind of every graph.
    pub profile: bool,
    /// Split tract's matrix products over a pool of this many threads (tract-linalg's
    /// `multithread-mm`); None = each graph on its own thread, as the daemon runs.
    pub mm_threads: Option<usize>,
    /// Run the graphs' convolutions channel-last (tract's `conv_nhwc` rewrite).
    pub channels_last: bool,
    /// The engine dskd runs the graphs on (tract's layout from `channels_last`).
    pub engine: Engine,
}

/// Median and 99th percentile of one quantity, in ms.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Stats {
    pub median_ms: f64,
    pub p99_ms: f64,
}

impl Stats {
    /// The daemon's own percentile rule (`sink::p50_p99`); NaN for no values.
    pub fn of(v: Vec<f64>) -> Self {
        let (median_ms, p99_ms) = crate::sink::p50_p99(v).unwrap_or((f64::NAN, f64::NAN));
        Self { median_ms, p99_ms }
    }
}

/// The stages of one frame, in pipeline order (the JSON keys of both benchmarks).
pub const STAGES: [&str; 9] =
    ["decode", "preprocess", "teacher", "student_e", "student_d", "networks", "map", "verdict", "total"];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latency {
    pub precision: String,
    pub threads: usize,
    /// Keyed by [`STAGES`].
    pub stages: Vec<(String, Stats)>,
}

impl Latency {
    pub fn stage(&self, name: &str) -> Option<Stats> {
        self.stages.iter().find(|(s, _)| s == name).map(|(_, v)| *v)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Throughput {
    pub precision: String,
    pub threads: usize,
    pub frames_per_s: f64,
    /// Per-frame wall time, decode to verdict.
    pub frame: Stats,
}

/// One graph's arithmetic rate in the one-thread latency run.
#[derive(Debug, Clone, Serialize)]
pub struct GraphRate {
    pub precision: String,
    pub graph: String,
    pub multiply_adds: u64,
    pub median_ms: f64,
    pub gflops: f64,
    /// Share of one core's FP32 peak (None when the peak is unknown).
    pub peak_share: Option<f64>,
}

/// The machine, as far as its peak FP32 rate goes.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub ghz: Option<f64>,
    pub simd: String,
    pub f32_lanes: usize,
    /// Full-width FMA instructions a core can start per cycle: 2 on Intel AVX-512/AVX2 server
    /// and desktop cores and on Cortex-A7x; 1 for AMD Zen 4's AVX-512 (two 256-bit halves).
    /// From the vendor and flags, not measured.
    pub fma_per_cycle: usize,
    /// One core: `ghz x lanes x 2 (an FMA is 2 flops) x fma_per_cycle`.
    pub core_peak_gflops: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub bundle: String,
    pub width: u32,
    pub height: u32,
    pub frame: String,
    pub frames: usize,
    pub mm_threads: Option<usize>,
    pub channels_last: bool,
    /// `tract` or `onnxruntime`.
    pub engine: String,
    /// The frame's image score per precision (to check the reference did the same work).
    pub scores: Vec<(String, f32)>,
    pub latency: Vec<Latency>,
    pub throughput: Vec<Throughput>,
    pub graphs: Vec<GraphRate>,
    pub profile: Vec<(String, Vec<GraphProfile>)>,
}

/// The encoded frame every configuration decodes: the given file, or a synthetic surface as JPEG.
pub fn frame_bytes(image: Option<&Path>) -> Result<(Vec<u8>, String)> {
    if let Some(p) = image {
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        return Ok((bytes, p.display().to_string()));
    }
    let img = image::DynamicImage::ImageLuma8(crate::synth::normal(1, 0, 512)).to_rgb8();
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
        .encode_image(&img)
        .context("encoding the synthetic frame")?;
    Ok((bytes, "synthetic 512x512 JPEG q90".into()))
}

/// Decode + inspect one frame; stage times with decode and the end-to-end total filled in.
fn one_frame(det: &Detector, bytes: &[u8]) -> Result<Timings> {
    let start = Instant::now();
    let img = image::load_from_memory(bytes).context("decoding the frame")?;
    let decode_ms = ms(start);
    let mut t = det.inspect(&img)?.timings;
    t.total_ms += decode_ms;
    t.decode_ms = decode_ms;
    Ok(t)
}

fn stage_value(t: &Timings, stage: &str) -> f64 {
    match stage {
        "decode" => t.decode_ms,
        "preprocess" => t.preprocess_ms,
        "teacher" => t.teacher_ms,
        "student_e" => t.student_e_ms,
        "student_d" => t.student_d_ms,
        "networks" => t.networks_ms,
        "map" => t.map_ms,
        "verdict" => t.verdict_ms,
        _ => t.total_ms,
    }
}

fn latency(det: &Detector, bytes: &[u8], o: &BenchOptions, threads: usize) -> Result<Latency> {
    for _ in 0..o.warmup {
        one_frame(det, bytes)?;
    }
    let all: Vec<Timings> = (0..o.frames).map(|_| one_frame(det, bytes)).collect::<Result<_>>()?;
    let stages =
        STAGES.iter().map(|s| (s.to_string(), Stats::of(all.iter().map(|t| stage_value(t, s)).collect()))).collect();
    Ok(Latency { precision: det.precision().name().into(), threads, stages })
}

/// `threads` workers share the (sequential) detector, each taking the next frame number.
fn throughput(det: &Detector, bytes: &[u8], frames: usize, threads: usize) -> Result<Throughput> {
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    let per_worker: Vec<Result<Vec<f64>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut times = Vec::new();
                    while next.fetch_add(1, Ordering::Relaxed) < frames {
                        times.push(one_frame(det, bytes)?.total_ms);
                    }
                    Ok(times)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("bench worker panicked")).collect()
    });
    let wall = start.elapsed().as_secs_f64();
    let mut times = Vec::new();
    for w in per_worker {
        times.extend(w?);
    }
    Ok(Throughput {
        precision: det.precision().name().into(),
        threads,
        frames_per_s: frames as f64 / wall,
        frame: Stats::of(times),
    })
}

#[cfg(feature = "mm-threads")]
fn set_matmul_threads(n: usize) -> Result<()> {
    crate::detector::set_matmul_threads(n);
    Ok(())
}

#[cfg(not(feature = "mm-threads"))]
fn set_matmul_threads(_: usize) -> Result<()> {
    anyhow::bail!(
        "--mm-threads needs a dskd built with `--features mm-threads` (off by default: it buys the daemon nothing)"
    )
}

/// Runs every configuration; `progress` is told what is being measured.
pub fn run(o: &BenchOptions, mut progress: impl FnMut(&str)) -> Result<Report> {
    let o = &BenchOptions { frames: o.frames.max(1), ..o.clone() };
    let b = Bundle::open(&o.bundle).with_context(|| format!("opening bundle {}", o.bundle.display()))?;
    let (bytes, frame) = frame_bytes(o.image.as_deref())?;
    let machine = machine();
    if let Some(n) = o.mm_threads {
        set_matmul_threads(n)?;
    }
    let mut report = Report {
        machine: machine.clone(),
        bundle: o.bundle.display().to_string(),
        width: b.manifest.input.width,
        height: b.manifest.input.height,
        frame,
        frames: o.frames,
        mm_threads: o.mm_threads,
        channels_last: o.channels_last,
        engine: o.engine.name().to_string(),
        scores: Vec::new(),
        latency: Vec::new(),
        throughput: Vec::new(),
        graphs: Vec::new(),
        profile: Vec::new(),
    };
    for &p in Precision::of(&b.manifest) {
        let name = p.name().to_string();
        let engine = o.engine.clone().with_tract_layout(Layout::from_channels_last(o.channels_last));
        let mut det = Detector::load_with(&b, p, &engine)?;
        for threads in [1, 2] {
            progress(&format!("latency {name}, {threads} thread(s)"));
            det.set_parallel(threads > 1);
            report.latency.push(latency(&det, &bytes, o, threads)?);
        }
        det.set_parallel(false);
        for &threads in &o.threads {
            progress(&format!("throughput {name}, {threads} thread(s)"));
            one_frame(&det, &bytes)?;
            report.throughput.push(throughput(&det, &bytes, o.frames, threads)?);
        }
        let img = image::load_from_memory(&bytes)?;
        report.scores.push((name.clone(), det.inspect(&img)?.verdict.score));
        if !matches!(engine, Engine::Tract { .. }) {
            // Operator profiles and cost rates come from tract's plans.
            continue;
        }
        let profile = det.profile(&crate::preprocess::to_tensor(&img, &b.manifest.input), 3)?;
        let one_thread = report.latency.iter().find(|l| l.precision == name && l.threads == 1).expect("measured above");
        for g in &profile {
            let median_ms = one_thread.stage(g.graph).map_or(f64::NAN, |s| s.median_ms);
            let gflops = 2.0 * g.multiply_adds as f64 / (median_ms / 1e3) / 1e9;
            report.graphs.push(GraphRate {
                precision: name.clone(),
                graph: g.graph.to_string(),
                multiply_adds: g.multiply_adds,
                median_ms,
                gflops,
                peak_share: machine.core_peak_gflops.map(|peak| gflops / peak),
            });
        }
        if o.profile {
            report.profile.push((name, profile));
        }
    }
    Ok(report)
}

/// CPU name, cores, clock and vector width from the OS (Linux; unknowns stay None).
pub fn machine() -> Machine {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let cpu = field("model name").or_else(|| field("CPU part").map(|p| format!("ARM part {p}"))).unwrap_or_default();
    let flags = field("flags").or_else(|| field("Features")).unwrap_or_default();
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    let (simd, lanes) = if has("avx512f") {
        ("avx512f", 16)
    } else if has("avx2") && has("fma") {
        ("avx2+fma", 8)
    } else if has("asimd") {
        ("neon (asimd)", 4)
    } else {
        ("sse", 4)
    };
    // Nominal clock: "@ 2.20GHz" in the model name, else the cpufreq maximum, else cpu MHz.
    let ghz = cpu
        .rsplit_once('@')
        .and_then(|(_, f)| f.trim().trim_end_matches("GHz").parse::<f64>().ok())
        .or_else(|| {
            std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
                .ok()
                .and_then(|k| k.trim().parse::<f64>().ok())
                .map(|khz| khz / 1e6)
        })
        .or_else(|| field("cpu MHz").and_then(|m| m.parse::<f64>().ok()).map(|m| m / 1e3));
    let amd = field("vendor_id").is_some_and(|v| v == "AuthenticAMD");
    let fma_per_cycle = if amd && lanes == 16 { 1 } else { 2 };
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ghz,
        simd: simd.into(),
        f32_lanes: lanes,
        fma_per_cycle,
        core_peak_gflops: ghz.map(|g| g * (lanes * 2 * fma_per_cycle) as f64),
    }
}

/// What `tools/ort_bench.py` measured: the same fields, for onnxruntime.
#[derive(Debug, Clone, Deserialize)]
pub struct Reference {
    pub onnxruntime: String,
    pub latency: Vec<Latency>,
    pub throughput: Vec<Throughput>,
    pub scores: Vec<(String, f32)>,
}

/// Runs the onnxruntime reference on the same bundle, frame, frame counts and threads. Its
/// Python comes from `$DSKD_ORT_PYTHON`, else `tools/ort-venv` (which makes a venv once).
pub fn reference(o: &BenchOptions) -> Result<Reference> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tools/ort_bench.py");
    let python = match std::env::var_os("DSKD_ORT_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => {
            let out = std::process::Command::new(root.join("tools/ort-venv"))
                .stderr(std::process::Stdio::inherit())
                .output()
                .context("running tools/ort-venv")?;
            anyhow::ensure!(out.status.success(), "tools/ort-venv failed");
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
    };
    let (bytes, _) = frame_bytes(o.image.as_deref())?;
    let frame = tempfile_path("dskd-bench-frame");
    std::fs::write(&frame, &bytes).with_context(|| format!("writing {}", frame.display()))?;
    let threads: Vec<String> = o.threads.iter().map(|t| t.to_string()).collect();
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg("--bundle")
        .arg(&o.bundle)
        .arg("--image")
        .arg(&frame)
        .args(["--frames", &o.frames.to_string(), "--warmup", &o.warmup.to_string()])
        .args(["--threads", &threads.join(",")])
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {} {}", python.display(), script.display()));
    let _ = std::fs::remove_file(&frame);
    let out = out?;
    anyhow::ensure!(out.status.success(), "{} failed ({})", script.display(), out.status);
    serde_json::from_slice(&out.stdout).context("reading the reference's JSON")
}

fn tempfile_path(stem: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{stem}-{}", std::process::id()))
}

/// The report as a table, with the reference and dskd/onnxruntime ratios beside it when given.
pub fn table(r: &Report, reference: Option<&Reference>) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let m = &r.machine;
    let ghz = m.ghz.map_or("? GHz".into(), |g| format!("{g:.2} GHz"));
    let peak = m.core_peak_gflops.map_or("unknown".into(), |p| format!("{p:.0} GFLOP/s"));
    let _ = writeln!(s, "machine: {} ({} cores, {ghz}, {}: {} f32 lanes)", m.cpu, m.cores, m.simd, m.f32_lanes);
    let _ = writeln!(
        s,
        "  FP32 peak per core {peak} (GHz x {} lanes x 2 flops per FMA x {} FMA/cycle, from vendor and flags)",
        m.f32_lanes, m.fma_per_cycle
    );
    let _ = writeln!(
        s,
        "bundle {} ({}x{}), frame: {}, median (p99) of {} frames after warm-up, ms",
        r.bundle, r.width, r.height, r.frame, r.frames
    );
    if let Some(n) = r.mm_threads {
        let _ = writeln!(s, "tract matrix products split over {n} threads (--mm-threads)");
    }
    if r.channels_last {
        let _ = writeln!(s, "convolutions run channel-last (--channels-last)");
    }
    let _ = writeln!(s, "dskd's engine: {}", r.engine);
    let _ = writeln!(s, "\nlatency: one frame at a time; 1 thread = sequential, 2 = T beside Se -> Sd");
    let mut header = format!("{:<11}", "stage");
    for l in &r.latency {
        let _ = write!(header, "{:>18}", format!("{} {}t", l.precision, l.threads));
        if let Some(rl) = reference.and_then(|re| find_latency(&re.latency, &l.precision, l.threads)) {
            let _ = write!(header, "{:>16}{:>7}", format!("ort {} {}t", rl.precision, rl.threads), "ratio");
        }
    }
    let _ = writeln!(s, "{header}");
    for stage in STAGES {
        let mut line = format!("{stage:<11}");
        for l in &r.latency {
            let ours = l.stage(stage);
            let _ = write!(line, "{:>18}", ours.map_or("-".into(), cell));
            if let Some(rl) = reference.and_then(|re| find_latency(&re.latency, &l.precision, l.threads)) {
                let theirs = rl.stage(stage);
                let _ = write!(line, "{:>16}{:>7}", theirs.map_or("-".into(), cell), ratio(ours, theirs));
            }
        }
        let _ = writeln!(s, "{line}");
    }
    let _ = writeln!(s, "\nthroughput: one frame per worker thread, frames/s (ratio = onnxruntime fps / dskd fps)");
    for t in &r.throughput {
        let mut line =
            format!("{:<5} {}t {:>8.1} fps  frame {}", t.precision, t.threads, t.frames_per_s, cell(t.frame));
        if let Some(rt) =
            reference.and_then(|re| re.throughput.iter().find(|x| x.precision == t.precision && x.threads == t.threads))
        {
            let _ = write!(line, "   ort {:>8.1} fps   ratio {:.2}", rt.frames_per_s, rt.frames_per_s / t.frames_per_s);
        }
        let _ = writeln!(s, "{line}");
    }
    let scaling: Vec<String> = ["f32", "int8"]
        .iter()
        .filter_map(|p| {
            let fps = |n| r.throughput.iter().find(|t| &t.precision == p && t.threads == n).map(|t| t.frames_per_s);
            Some(format!("{p} {:.2}x", fps(2)? / fps(1)?))
        })
        .collect();
    if !scaling.is_empty() {
        let _ = writeln!(s, "1 -> 2 threads: {}", scaling.join(", "));
    }
    let _ = writeln!(s, "\ngraphs (1 thread): multiply-adds, median ms, achieved GFLOP/s, share of one core's peak");
    for g in &r.graphs {
        let share = g.peak_share.map_or("-".into(), |p| format!("{:.1}%", 100.0 * p));
        let _ = writeln!(
            s,
            "{:<5} {:<10} {:>8.1} M {:>8.2} ms {:>7.1} GFLOP/s {:>7}",
            g.precision,
            g.graph,
            g.multiply_adds as f64 / 1e6,
            g.median_ms,
            g.gflops,
            share
        );
    }
    for (precision, graphs) in &r.profile {
        for g in graphs {
            let total: f64 = g.ops.iter().map(|o| o.ms).sum();
            let _ = writeln!(s, "\nprofile {precision} {} ({total:.2} ms in ops):", g.graph);
            for op in g.ops.iter().take(8) {
                let _ = writeln!(
                    s,
                    "  {:<28} {:>3} nodes {:>8.2} ms {:>5.1}%",
                    op.op,
                    op.nodes,
                    op.ms,
                    100.0 * op.ms / total
                );
            }
        }
    }
    if let Some(re) = reference {
        let _ = writeln!(
            s,
            "\nreference: onnxruntime {} (tools/ort_bench.py), same files, frame and threads",
            re.onnxruntime
        );
        for (p, ours) in &r.scores {
            if let Some((_, theirs)) = re.scores.iter().find(|(q, _)| q == p) {
                let _ = writeln!(s, "  same work: {p} image score dskd {ours:.5}, onnxruntime {theirs:.5}");
            }
        }
    }
    s
}

fn find_latency<'a>(all: &'a [Latency], precision: &str, threads: usize) -> Option<&'a Latency> {
    all.iter().find(|l| l.precision == precision && l.threads == threads)
}

fn cell(v: Stats) -> String {
    format!("{:.2} ({:.2})", v.median_ms, v.p99_ms)
}

/// dskd time / onnxruntime time of the medians.
fn ratio(ours: Option<Stats>, theirs: Option<Stats>) -> String {
    match (ours, theirs) {
        (Some(a), Some(b)) if b.median_ms > 0.0 => format!("{:.2}", a.median_ms / b.median_ms),
        _ => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_read_median_and_p99_off_the_sorted_values() {
        let s = Stats::of((1..=100).rev().map(f64::from).collect());
        assert_eq!(s.median_ms, 51.0);
        assert_eq!(s.p99_ms, 99.0);
        let one = Stats::of(vec![3.0]);
        assert_eq!((one.median_ms, one.p99_ms), (3.0, 3.0));
    }
}
