//! Shared by the integration tests that need a bundle with int8 graphs: the demo bundle's
//! default configuration keeps none (its fixed-normalisation int8 misses the verdict bound,
//! docs/RESULTS.md §0c), so these tests train their own, once per test binary.
#![cfg(feature = "train")]
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// A small bundle with int8 graphs (64 px, a few steps on synthetic images, the verdict bound
/// opened so int8 is always kept: these tests check engines and plans, not int8's quality).
pub fn int8_bundle() -> PathBuf {
    static BUNDLE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = BUNDLE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let counts = dskd::synth::SynthCounts { train: 20, test_good: 0, test_defect: 0 };
        dskd::synth::write_dataset(&data, 3, 64, counts).unwrap();
        let out = dir.path().join("bundle");
        let o = Command::new(env!("CARGO_BIN_EXE_dskd-train"))
            .args(["--quiet", "--size", "64", "--epochs", "1", "--max-steps", "3", "--int8-bound", "10"])
            .arg("--data")
            .arg(data.join("train/good"))
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (dir, out)
    });
    path.clone()
}
