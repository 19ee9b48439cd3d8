//! The onnxruntime engine beside tract (cargo feature `onnxruntime`; the library from
//! `$ORT_DYLIB_PATH`, which `tools/test` sets from `tools/ort-lib`): the same bundle's maps on
//! both engines, golden parity through `dskd verify`'s check, and a library that is not there
//! refused with the path named.
#![cfg(feature = "onnxruntime")]

use std::path::{Path, PathBuf};

use dskd::bundle::Bundle;
use dskd::detector::{Detector, Engine, Precision};

mod common;
mod cpu;

fn onnxruntime() -> Engine {
    let lib = std::env::var_os("ORT_DYLIB_PATH")
        .expect("set ORT_DYLIB_PATH to libonnxruntime.so (tools/ort-lib prints it; tools/test sets it)");
    Engine::Onnxruntime { library: Some(PathBuf::from(lib)) }
}

fn demo() -> Bundle {
    Bundle::open(Path::new("models/demo")).expect("the demo bundle opens")
}

/// Largest |a - b| over the peak of `a`.
fn relative_error(a: &[f32], b: &[f32]) -> f32 {
    let peak = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) / peak
}

#[test]
fn onnxruntime_maps_match_tract_and_the_golden_maps() {
    engine_checks(&demo());
}

/// The same on int8 graphs (onnxruntime's integer kernels against tract's float QDQ).
#[cfg(feature = "train")]
#[test]
fn onnxruntime_int8_maps_match_tract() {
    let bundle = Bundle::open(&common::int8_bundle()).unwrap();
    assert!(bundle.manifest.graphs.int8.is_some());
    engine_checks(&bundle);
}

fn engine_checks(bundle: &Bundle) {
    let engine = onnxruntime();
    for &precision in Precision::of(&bundle.manifest) {
        let tract = Detector::load(bundle, precision).unwrap();
        let ort = Detector::load_with(bundle, precision, &engine).unwrap();
        assert_eq!(ort.engine(), "onnxruntime");
        for sample in &bundle.manifest.golden.samples {
            let img = dskd::preprocess::load_image(&bundle.path(&sample.image)).unwrap();
            let (a, b) = (tract.inspect(&img).unwrap(), ort.inspect(&img).unwrap());
            let err = relative_error(&a.map.data, &b.map.data);
            match precision {
                Precision::F32 => {
                    assert!(err <= 1e-4, "{}: f32 maps differ by {err:.2e} of peak", sample.image);
                    assert_eq!(a.verdict.defect, b.verdict.defect);
                }
                // Integer kernels (onnxruntime) against tract's float QDQ: the bundle's int8
                // tolerance, the bound its golden check already holds both to, where this
                // CPU's int8 kernels do not saturate (`cpu::onnxruntime_int8_is_exact`).
                Precision::Int8 if cpu::onnxruntime_int8_is_exact() => {
                    let tol = bundle.manifest.golden.tolerance_int8;
                    assert!(err <= tol, "{}: int8 maps differ by {err:.2e} of peak (bound {tol})", sample.image);
                }
                Precision::Int8 => {}
            }
        }
    }
    match dskd::verify::verify_on(&bundle.dir, &engine) {
        Ok(checks) => assert!(checks.iter().all(|c| c.engine == "onnxruntime" && c.ok), "{checks:?}"),
        // Saturating int8 kernels: the golden check must catch them, naming the precision.
        Err(e) if !cpu::onnxruntime_int8_is_exact() && bundle.manifest.graphs.int8.is_some() => {
            let e = format!("{e:#}");
            assert!(e.contains("Int8 map differs from the golden map"), "{e}");
        }
        Err(e) => panic!("golden parity on onnxruntime: {e:#}"),
    }
}

#[test]
fn a_missing_library_is_refused_with_its_path() {
    let engine = Engine::Onnxruntime { library: Some(PathBuf::from("/nonexistent/libonnxruntime.so")) };
    let err = Detector::load_with(&demo(), Precision::F32, &engine).err().expect("no library, no detector");
    // Whether this process already loaded the real library or tries this one first, the
    // error names the file asked for.
    assert!(err.to_string().contains("/nonexistent/libonnxruntime.so"), "{err}");
}
