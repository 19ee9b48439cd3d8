//! Bad input to `dskd-train`: teacher weights with missing or misshapen keys, .pth files, and
//! an empty data folder each give one clear error naming the file, exit code 2, no panic.
#![cfg(feature = "train")]

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// MobileNetV2's shipped weights (torchvision's layout), edited by the tests below.
const WEIGHTS: &str = "models/teachers/mobilenet_v2/mobilenet_v2-imagenet-features.safetensors";
/// The default teacher's shipped weights, relative to a teachers folder.
const DEFAULT_TEACHER: &str = "efficientnet_lite0/efficientnet_lite0-imagenet-features.safetensors";

fn train(weights: &Path, data: &Path, out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dskd-train"))
        .args(["--quiet", "--size", "64", "--epochs", "1", "--teacher", "mobilenet_v2_s32", "--teacher-weights"])
        .arg(weights)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .output()
        .expect("dskd-train runs")
}

fn assert_fails(o: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
}

/// Rewrites the shipped weights with `edit` applied to the (name -> (dtype, shape, bytes)) table.
fn edited_weights(
    dir: &Path,
    edit: impl FnOnce(&mut HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>),
) -> std::path::PathBuf {
    let bytes = std::fs::read(WEIGHTS).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut table: HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> =
        st.tensors().into_iter().map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec()))).collect();
    edit(&mut table);
    let views: Vec<(String, TensorView)> = table
        .iter()
        .map(|(n, (dtype, shape, data))| (n.clone(), TensorView::new(*dtype, shape.clone(), data).unwrap()))
        .collect();
    let path = dir.join("weights.safetensors");
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    path
}

fn some_images(dir: &Path) -> std::path::PathBuf {
    let data = dir.join("data");
    dskd::synth::write_dataset(&data, 1, 64, dskd::synth::SynthCounts { train: 6, test_good: 0, test_defect: 0 })
        .unwrap();
    data.join("train")
}

#[test]
fn missing_teacher_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let w = edited_weights(dir.path(), |t| {
        t.remove("features.5.conv.1.1.running_var");
    });
    let o = train(&w, &some_images(dir.path()), &dir.path().join("out"));
    assert_fails(&o, &["weights.safetensors", "missing key `features.5.conv.1.1.running_var`"]);
}

#[test]
fn misshapen_teacher_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let w = edited_weights(dir.path(), |t| {
        let (_, shape, data) = t.get_mut("features.0.0.weight").unwrap();
        *shape = vec![16, 3, 3, 3];
        data.truncate(16 * 27 * 4);
    });
    let o = train(&w, &some_images(dir.path()), &dir.path().join("out"));
    assert_fails(&o, &["weights.safetensors", "`features.0.0.weight` has shape [16, 3, 3, 3], expected [32, 3, 3, 3]"]);
}

#[test]
fn unreadable_pth_weights_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let pth = dir.path().join("resnet.pth");
    std::fs::write(&pth, b"PK\x03\x04").unwrap();
    let o = train(&pth, &some_images(dir.path()), &dir.path().join("out"));
    assert_fails(&o, &["resnet.pth", "not a readable PyTorch file"]);
}

#[test]
fn empty_data_folder_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = train(Path::new(WEIGHTS), &empty, &dir.path().join("out"));
    assert_fails(&o, &["empty", "no images found"]);
}

/// The trainer run from a folder other than the project root, with no --teacher-weights and no
/// `DSKD_TEACHERS`, finds the shipped teacher (here: through the source tree it was built from)
/// and trains.
#[test]
fn shipped_teacher_is_found_from_another_folder() {
    let dir = tempfile::tempdir().unwrap();
    let data = some_images(dir.path());
    let o = Command::new(env!("CARGO_BIN_EXE_dskd-train"))
        .current_dir(dir.path())
        .env_remove("DSKD_TEACHERS")
        .args(["--quiet", "--size", "64", "--max-steps", "1", "--no-bundle", "--data"])
        .arg(&data)
        .args(["--out", "out"])
        .output()
        .expect("dskd-train runs");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "stderr: {err}");
    assert!(dir.path().join("out.checkpoints/last.bpk").is_file(), "no checkpoint; stderr: {err}");
}

/// `DSKD_TEACHERS` is the one place looked when set: a folder with the weights works, one
/// without them fails naming where it looked and the flag that points elsewhere.
#[test]
fn teachers_folder_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let data = some_images(dir.path());
    let run = |teachers: &Path, out: &str| {
        Command::new(env!("CARGO_BIN_EXE_dskd-train"))
            .current_dir(dir.path())
            .env("DSKD_TEACHERS", teachers)
            .args(["--quiet", "--size", "64", "--max-steps", "1", "--no-bundle", "--data"])
            .arg(&data)
            .args(["--out", out])
            .output()
            .expect("dskd-train runs")
    };
    let empty = dir.path().join("no-teachers");
    std::fs::create_dir_all(&empty).unwrap();
    let o = run(&empty, "a");
    let looked = empty.join(DEFAULT_TEACHER);
    assert_fails(&o, &[&looked.display().to_string(), "--teacher-weights", "DSKD_TEACHERS"]);

    let installed = dir.path().join("share/dskd/teachers");
    std::fs::create_dir_all(installed.join("efficientnet_lite0")).unwrap();
    std::fs::copy(Path::new("models/teachers").join(DEFAULT_TEACHER), installed.join(DEFAULT_TEACHER)).unwrap();
    let o = run(&installed, "b");
    assert!(o.status.success(), "stderr: {}", String::from_utf8_lossy(&o.stderr));
}

/// `--data` repeated takes the folders together (a line's good images and the frames a
/// person labelled good in `dskd review export`'s `good/`); a missing one is named.
#[test]
fn several_data_folders_are_taken_together() {
    let dir = tempfile::tempdir().unwrap();
    let data = some_images(dir.path());
    let labelled = dir.path().join("export/good");
    std::fs::create_dir_all(&labelled).unwrap();
    for (i, entry) in std::fs::read_dir(data.join("good")).unwrap().take(4).enumerate() {
        std::fs::copy(entry.unwrap().path(), labelled.join(format!("frame{i}.png"))).unwrap();
    }
    let run = |second: &Path| {
        Command::new(env!("CARGO_BIN_EXE_dskd-train"))
            .args(["--max-steps", "1", "--size", "64", "--no-bundle", "--quiet", "--data"])
            .arg(&data)
            .arg("--data")
            .arg(second)
            .arg("--out")
            .arg(dir.path().join("out"))
            .output()
            .expect("dskd-train runs")
    };
    let o = run(&labelled);
    assert!(o.status.success(), "stderr: {}", String::from_utf8_lossy(&o.stderr));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains("9 train / 1 val images"), "6 + 4 images, every 10th held out: {said}");
    assert_fails(&run(&dir.path().join("nowhere")), &["nowhere"]);
}

/// An input size the default teacher's pyramid does not halve evenly down to Sd's bottleneck
/// is refused before training, with the sizes that work (it failed mid-training before).
#[test]
fn an_input_size_sd_cannot_rebuild_is_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let data = some_images(dir.path());
    let o = Command::new(env!("CARGO_BIN_EXE_dskd-train"))
        .args(["--max-steps", "1", "--size", "224", "--no-bundle", "--quiet", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .expect("dskd-train runs");
    assert_fails(&o, &["224x224", "multiple of 64", "e.g. 256"]);
}
