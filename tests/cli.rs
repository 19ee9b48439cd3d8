//! Bad input through the command line: each case gets one clear error naming the file and the
//! problem, exit code 2, no panic. Bundles are copies of the committed `models/demo`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn dskd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dskd")).args(args).output().expect("dskd runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a clean failure: exit code 2, no panic, and every `needle` in stderr.
fn assert_fails(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
}

/// A private copy of the demo bundle.
fn demo_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("demo");
    std::fs::create_dir_all(dst.join("golden")).unwrap();
    for entry in walk(Path::new("models/demo")) {
        let rel = entry.strip_prefix("models/demo").unwrap();
        std::fs::copy(&entry, dst.join(rel)).unwrap();
    }
    (dir, dst)
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

/// Rewrites one file's hash in the manifest, so a damaged file gets past the hash check.
fn rehash(bundle: &Path, file: &str) {
    let mut m = dskd::bundle::read_manifest(bundle).unwrap();
    m.files.insert(file.into(), dskd::bundle::sha256_file(&bundle.join(file)).unwrap());
    std::fs::write(bundle.join("bundle.toml"), toml::to_string(&m).unwrap()).unwrap();
}

#[test]
fn demo_bundle_verifies() {
    let o = dskd(&["verify", "models/demo"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("verified"));
}

/// tract's NHWC plans (`[detector] tract_layout = "channels-last"`) reproduce the golden maps.
#[test]
fn demo_bundle_verifies_channels_last() {
    let o = dskd(&["verify", "models/demo", "--channels-last"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("golden checks on tract (channels-last)"));
}

#[test]
fn missing_onnx_is_named() {
    let (_d, b) = demo_copy();
    std::fs::remove_file(b.join("student_e.onnx")).unwrap();
    assert_fails(&dskd(&["verify", b.to_str().unwrap()]), &["student_e.onnx", "No such file"]);
}

#[test]
fn corrupt_onnx_with_a_matching_hash_is_named() {
    let (_d, b) = demo_copy();
    std::fs::write(b.join("teacher.onnx"), b"\x08\x07garbage that is not a protobuf model").unwrap();
    rehash(&b, "teacher.onnx");
    assert_fails(&dskd(&["verify", b.to_str().unwrap()]), &["teacher.onnx", "cannot load ONNX graph"]);
}

#[test]
fn wrong_hash_is_named() {
    let (_d, b) = demo_copy();
    let map = b.join("golden/00.map.f32");
    let mut bytes = std::fs::read(&map).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&map, bytes).unwrap();
    assert_fails(&dskd(&["verify", b.to_str().unwrap()]), &["golden/00.map.f32", "sha256 mismatch"]);
}

#[test]
fn unknown_manifest_key_is_named() {
    let (_d, b) = demo_copy();
    let text = std::fs::read_to_string(b.join("bundle.toml")).unwrap();
    std::fs::write(b.join("bundle.toml"), text.replace("[input]", "[input]\nwidht = 3")).unwrap();
    assert_fails(&dskd(&["verify", b.to_str().unwrap()]), &["bundle.toml", "widht"]);
}

/// A golden map that no longer matches is a failed check (exit 1), not an error.
#[test]
fn golden_mismatch_fails_the_check() {
    let (_d, b) = demo_copy();
    let map = b.join("golden/00.map.f32");
    let bytes: Vec<u8> = std::fs::read(&map)
        .unwrap()
        .chunks(4)
        .flat_map(|c| (f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * 1.5).to_le_bytes())
        .collect();
    std::fs::write(&map, bytes).unwrap();
    rehash(&b, "golden/00.map.f32");
    let o = dskd(&["verify", b.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("golden/00.png"));
}

/// An image that does not decode is named; the good image in the same call is still inspected.
#[test]
fn undecodable_image_is_named_and_the_rest_still_run() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.png");
    std::fs::write(&bad, b"not an image").unwrap();
    let o = dskd(&["infer", "--bundle", "models/demo", bad.to_str().unwrap(), "models/demo/golden/00.png"]);
    assert_fails(&o, &["broken.png"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.lines().count(), 1, "the good image still gives its line: {out}");
    let line: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(line["verdict"], "ok");
}
