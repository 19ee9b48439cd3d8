//! `dskd eval` end to end: the committed demo bundle on a labelled synthetic set (normal and
//! defective images with masks from `dskd synth`), through the CLI, and its bad-input errors.

use std::path::Path;
use std::process::{Command, Output};

fn dskd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dskd")).args(args).output().expect("dskd runs")
}

fn synth(dir: &Path) {
    let out = dir.to_str().unwrap();
    let o = dskd(&["synth", "--out", out, "--seed", "11", "--train", "0", "--test-good", "10", "--test-defect", "4"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn eval_on_a_synthetic_set_writes_a_report_well_above_chance() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth(&data);
    let out = dir.path().join("report");
    let o = dskd(&[
        "eval",
        "--bundle",
        "models/demo",
        "--dataset",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("img AUROC") && stdout.contains("\nall "), "{stdout}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let overall = &r["overall"];
    assert_eq!(overall["normal"], 10);
    assert_eq!(overall["defective"], 12, "4 each of scratch, spot, crack");
    for key in ["image_auroc", "pixel_auroc", "aupro", "f1_max"] {
        let v = overall[key].as_f64().unwrap_or_else(|| panic!("{key} missing: {overall}"));
        assert!((0.0..=1.0).contains(&v), "{key} = {v}");
    }
    assert!(overall["image_auroc"].as_f64().unwrap() > 0.9, "{overall}");
    assert!(overall["pixel_auroc"].as_f64().unwrap() > 0.9, "{overall}");
    assert!(overall["aupro"].as_f64().unwrap() > 0.3, "above a random map's ~0.15: {overall}");
    for kind in ["scratch", "spot", "crack"] {
        assert!(r["per_type"][kind]["image_auroc"].is_number(), "{kind}: {}", r["per_type"]);
    }
    assert!(overall["false_alarm_rate"].as_f64().unwrap() <= 0.2);
    assert_eq!(r["images"].as_array().unwrap().len(), 22);
    for png in ["roc.png", "histogram.png", "hardest.png"] {
        let img = image::open(out.join(png)).unwrap_or_else(|e| panic!("{png}: {e}"));
        assert!(img.width() >= 400 && img.height() >= 200, "{png}");
    }
}

#[test]
fn eval_names_a_mask_whose_size_differs_from_its_image() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth(&data);
    let mask = data.join("ground_truth/spot/000_mask.png");
    image::GrayImage::new(10, 10).save(&mask).unwrap();
    let o = dskd(&["eval", "--bundle", "models/demo", "--dataset", data.to_str().unwrap(), "--quiet"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("000_mask.png") && err.contains("10x10"), "{err}");
}

#[test]
fn eval_names_a_dataset_without_test_images_and_a_split_naming_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("empty/train/good")).unwrap();
    let o = dskd(&["eval", "--bundle", "models/demo", "--dataset", dir.path().join("empty").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("empty") && err.contains("no test images"), "{err}");

    let split = dir.path().join("split.tsv");
    std::fs::write(&split, "train\tgood/a.png\ntest\tgood/missing.png\n").unwrap();
    let o = dskd(&["eval", "--bundle", "models/demo", "--dataset", split.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("split.tsv") && err.contains("good/missing.png"), "{err}");
}

/// `dskd eval --knn`: the nearest-neighbour ceiling on the demo bundle's teacher, bank from a
/// split file's train images, threshold from its val images, through the same metrics.
#[test]
fn knn_ceiling_scores_a_synthetic_set_and_names_a_bad_level() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = data.to_str().unwrap();
    let o = dskd(&["synth", "--out", out, "--seed", "11", "--train", "12", "--test-good", "10", "--test-defect", "4"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let split = data.join("split.tsv");
    let lines: Vec<String> =
        (0..12).map(|i| format!("{}\ttrain/good/{i:03}.png", if i < 9 { "train" } else { "val" })).collect();
    std::fs::write(&split, lines.join("\n") + "\n").unwrap();
    let report = dir.path().join("report");
    let run = |levels: &str, fuse: bool| {
        let mut args = vec!["eval", "--bundle", "models/demo", "--dataset", out, "--knn", split.to_str().unwrap()];
        args.extend(["--knn-levels", levels, "--knn-bank", "500", "--out", report.to_str().unwrap(), "--quiet"]);
        if fuse {
            args.push("--knn-fuse");
        }
        dskd(&args)
    };
    let o = run("2,3", false);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("scorer: knn (teacher levels 2+3, bank 500)"), "{stdout}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap()).unwrap();
    assert!(r["scorer"].as_str().unwrap().starts_with("knn"), "{}", r["scorer"]);
    let overall = &r["overall"];
    assert!(overall["image_auroc"].as_f64().unwrap() > 0.8, "{overall}");
    assert!(overall["pixel_auroc"].as_f64().unwrap() > 0.8, "{overall}");

    let o = run("1,2,3", true);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("scorer: knn (teacher levels 1+2+3, bank 500) + students"), "{stdout}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap()).unwrap();
    assert!(r["overall"]["image_auroc"].as_f64().unwrap() > 0.8, "{}", r["overall"]);

    let o = run("2,4", false);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("levels [2, 4]") && err.contains("1..=3"), "{err}");
}
