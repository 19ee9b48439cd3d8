//! The GPU training route, on the CPU: `dskd resize` shrinks a split, `tools/gpu-run` trains
//! from it and packs the checkpoints as it does on a GPU machine, and `dskd-train
//! --export-only` turns them into a bundle here that `dskd verify` accepts. Also the cheap
//! check that `tools/cuda-build` still matches the LLVM bundler burn's CUDA backend expects.
#![cfg(feature = "train")]

use std::path::Path;
use std::process::Command;

fn ok(cmd: &mut Command) -> String {
    let o = cmd.output().expect("command runs");
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn cuda_build_script_matches_the_locked_llvm_bundler() {
    let text = ok(Command::new("tools/cuda-build").arg("--check"));
    assert!(text.contains("matches Cargo.lock"), "{text}");
}

#[test]
fn gpu_run_on_cpu_brings_back_checkpoints_that_export_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p);
    dskd::synth::write_dataset(
        &d("synth"),
        5,
        80,
        dskd::synth::SynthCounts { train: 12, test_good: 0, test_defect: 0 },
    )
    .unwrap();
    let mut split = String::new();
    for (i, f) in dskd::train::data::list_images(&d("synth/train/good")).unwrap().iter().enumerate() {
        let role = if i % 4 == 3 { "val" } else { "train" };
        split += &format!("{role}\t{}\n", f.strip_prefix(d("synth")).unwrap().display());
    }
    std::fs::write(d("synth/split.tsv"), split).unwrap();
    ok(Command::new(env!("CARGO_BIN_EXE_dskd"))
        .args(["resize", "--size", "64", "--split"])
        .arg(d("synth/split.tsv"))
        .arg("--out")
        .arg(d("small")));

    let text = ok(Command::new("tools/gpu-run")
        .args(["--device", "cpu", "--size", "64", "--batch", "4", "--epochs", "2", "--no-torch", "--st-delay", "0"])
        .args(["--deadline", "400", "--split"])
        .arg(d("small/split.tsv"))
        .env("OUT", d("out"))
        .env("DSKD_TRAIN", env!("CARGO_BIN_EXE_dskd-train")));
    assert!(text.contains("dskd-train dskd exit 0") && text.contains("dskd-train st exit 0"), "{text}");
    assert!(d("out/st-checkpoints.tar").is_file(), "the S-T baseline trained beside DSKD");
    let log = std::fs::read_to_string(d("out/dskd.log")).unwrap();
    assert!(log.contains("epoch   2"), "{log}");
    std::fs::create_dir_all(d("ckpt")).unwrap();
    ok(Command::new("tar").arg("xf").arg(d("out/dskd-checkpoints.tar")).arg("-C").arg(d("ckpt")));
    let log = std::fs::read_to_string(d("ckpt/train_log.csv")).unwrap();
    let val_rows = log.lines().skip(1).filter(|l| l.split(',').nth(3).is_some_and(|v| !v.is_empty())).count();
    assert_eq!(val_rows, 2, "one val loss per epoch:\n{log}");
    for f in ["best.bpk", "state.json", "train_log.csv"] {
        assert!(d("ckpt").join(f).is_file(), "{f} missing from checkpoints.tar");
    }

    // Back "here": export from the original (unshrunk) images, then verify.
    let text = ok(Command::new(env!("CARGO_BIN_EXE_dskd-train"))
        .args(["--quiet", "--size", "64", "--golden", "1", "--calibration-images", "2", "--export-only", "--split"])
        .arg(d("synth/split.tsv"))
        .arg("--checkpoints")
        .arg(d("ckpt"))
        .arg("--out")
        .arg(d("bundle")));
    assert!(text.contains("2 epochs"), "{text}");
    let text = ok(Command::new(env!("CARGO_BIN_EXE_dskd")).arg("verify").arg(d("bundle")));
    assert!(text.contains("ok: "), "{text}");
    let manifest = std::fs::read_to_string(Path::new(&d("bundle")).join("bundle.toml")).unwrap();
    assert!(manifest.contains("device = \"cpu\""), "{manifest}");
}
