//! Every input under `fuzz/regressions/<target>/` through its fuzz target's function: the
//! crashes `tools/fuzz` found (`crash-*`, kept once fixed) and the seeds it starts from
//! (`seed-*`). A panic fails the test; the fuzz targets call the same functions.

use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 5] = [
    ("command", dskd::fuzzing::command),
    ("manifest", dskd::fuzzing::manifest),
    ("pixels", dskd::fuzzing::pixels),
    ("pipe_stream", dskd::fuzzing::pipe_stream),
    ("image_file", dskd::fuzzing::image_file),
];

#[test]
fn every_kept_fuzz_input_is_handled_without_a_panic() {
    for (name, target) in TARGETS {
        let dir = Path::new("fuzz/regressions").join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{}: no inputs", dir.display());
        for input in inputs {
            let bytes = std::fs::read(&input).unwrap();
            let run = std::panic::catch_unwind(|| target(&bytes));
            assert!(run.is_ok(), "{} panicked on {}", name, input.display());
        }
    }
}
