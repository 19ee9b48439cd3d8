//! `dskd bench` end to end on the demo bundle (and, for int8, on a bundle that has int8
//! graphs): every stage and mode is reported, the graphs' arithmetic is counted, and the
//! onnxruntime reference (its venv made by tools/ort-venv) does the same work: its image score
//! for the frame matches dskd's. No timing is asserted; speed is read from the report, not
//! tested.

use std::path::Path;
use std::process::Command;

mod common;
mod cpu;

/// The precisions a bundle has graphs for.
fn precisions(bundle: &Path) -> Vec<&'static str> {
    let b = dskd::bundle::Bundle::open(bundle).unwrap();
    dskd::detector::Precision::of(&b.manifest).iter().map(|p| p.name()).collect()
}

/// Benchmarks on a lossless frame at the input size, so that both sides see the very same
/// pixels (JPEG decoders and resize filters differ in their last bits).
fn bench(bundle: &Path, extra: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let frame = dir.path().join("frame.png");
    let size = dskd::bundle::Bundle::open(bundle).unwrap().manifest.input.width;
    dskd::synth::normal(1, 0, size).save(&frame).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_dskd"))
        .args(["bench", "--frames", "3", "--warmup", "1", "--threads", "1,2", "--json", "--bundle"])
        .arg(bundle)
        .arg("--image")
        .arg(&frame)
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn stages(latency: &serde_json::Value) -> Vec<(String, f64)> {
    latency["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s[0].as_str().unwrap().to_string(), s[1]["median_ms"].as_f64().unwrap()))
        .collect()
}

#[test]
fn bench_reports_every_stage_and_the_reference_does_the_same_work() {
    bench_checks(Path::new("models/demo"));
}

/// The same on int8 graphs: tract's and onnxruntime's integer arithmetic agree on the score.
#[cfg(feature = "train")]
#[test]
fn bench_int8_matches_the_reference() {
    let bundle = common::int8_bundle();
    assert_eq!(precisions(&bundle), ["f32", "int8"]);
    bench_checks(&bundle);
}

fn bench_checks(bundle: &Path) {
    let v = bench(bundle, &["--profile"]);
    let d = &v["dskd"];
    let ps = precisions(bundle);
    let names = ["decode", "preprocess", "teacher", "student_e", "student_d", "networks", "map", "verdict", "total"];
    let latency = d["latency"].as_array().unwrap();
    assert_eq!(latency.len(), 2 * ps.len(), "each precision at 1 and 2 threads");
    for l in latency {
        let st = stages(l);
        assert_eq!(st.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), names);
        let get = |n: &str| st.iter().find(|(k, _)| k == n).unwrap().1;
        assert!(st.iter().all(|(_, ms)| ms.is_finite() && *ms >= 0.0), "{st:?}");
        assert!(get("total") >= get("networks") && get("networks") > 0.0, "{st:?}");
    }
    assert_eq!(d["throughput"].as_array().unwrap().len(), 2 * ps.len());
    for g in d["graphs"].as_array().unwrap() {
        assert!(g["multiply_adds"].as_u64().unwrap() > 1_000_000, "{g}");
        assert!(g["gflops"].as_f64().unwrap() > 0.0, "{g}");
    }
    let profile = d["profile"].as_array().unwrap();
    assert_eq!(profile.len(), ps.len(), "a profile per precision");
    assert!(profile[0][1][0]["ops"].as_array().unwrap().iter().any(|op| op["ms"].as_f64().unwrap() > 0.0));

    let r = &v["onnxruntime"];
    assert!(r["version"].as_str().is_some(), "the reference ran: {v}");
    assert_eq!(r["latency"].as_array().unwrap().len(), 2 * ps.len());
    for l in r["latency"].as_array().unwrap() {
        assert_eq!(stages(l).iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), names);
    }
    // Same frame, same graphs, same map definition: the same score (f32 exactly up to float
    // rounding; int8 within onnxruntime's and tract's different integer arithmetic, where this
    // CPU's onnxruntime int8 kernels do not saturate: `cpu::onnxruntime_int8_is_exact`).
    let int8 = cpu::onnxruntime_int8_is_exact();
    for (p, tol) in [("f32", 1e-3), ("int8", 0.05)].into_iter().filter(|(p, _)| ps.contains(p) && (int8 || *p == "f32"))
    {
        let score =
            |s: &serde_json::Value| s.as_array().unwrap().iter().find(|x| x[0] == p).unwrap()[1].as_f64().unwrap();
        let (ours, theirs) = (score(&d["scores"]), score(&r["scores"]));
        assert!((ours - theirs).abs() <= tol * ours.abs(), "{p}: dskd {ours} vs onnxruntime {theirs}");
    }
}

/// `--channels-last` (tract's NHWC rewrite of every convolution) is a layout change only: the
/// demo bundle's maps match the default plans' to float rounding, for a normal frame and a
/// defective one (and int8 graphs' likewise, on a bundle that has them).
#[test]
fn channels_last_plans_give_the_same_maps() {
    channels_last_checks(Path::new("models/demo"));
}

#[cfg(feature = "train")]
#[test]
fn channels_last_int8_plans_give_the_same_maps() {
    channels_last_checks(&common::int8_bundle());
}

fn channels_last_checks(bundle: &Path) {
    use dskd::bundle::Bundle;
    use dskd::detector::{Detector, Layout, Precision};
    let b = Bundle::open(bundle).unwrap();
    let frames = [
        image::DynamicImage::ImageLuma8(dskd::synth::normal(5, 0, 256)),
        image::DynamicImage::ImageLuma8(dskd::synth::defective(5, 1, 256, dskd::synth::Defect::Scratch).0),
    ];
    for &p in Precision::of(&b.manifest) {
        let first = Detector::load(&b, p).unwrap();
        let last = Detector::load_with(&b, p, &dskd::detector::Engine::Tract { layout: Layout::ChannelsLast }).unwrap();
        for frame in &frames {
            let (a, c) = (first.inspect(frame).unwrap(), last.inspect(frame).unwrap());
            let peak = a.map.data.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = a.map.data.iter().zip(&c.map.data).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(peak > 0.0 && diff <= 1e-4 * peak, "{}: maps differ by {diff} (peak {peak})", p.name());
        }
    }
}
