#!/usr/bin/env python3
"""Reference timings for `dskd bench`: onnxruntime on the same ONNX files of a bundle.

Each graph runs with one intra-op thread (as each tract plan does); prints one JSON object per
precision with the median ms of teacher, student_e, student_d, their sequential sum, and
T ∥ (Se→Sd) estimated as max(teacher, student_e + student_d).
Needs `pip install onnxruntime numpy` (and `tomllib`, Python >= 3.11).
"""
import argparse
import json
import statistics
import time
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def median_ms(fn, runs: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench(bundle: Path, graphs: dict, inp: dict, runs: int) -> dict:
    x = np.random.default_rng(0).standard_normal((1, 3, inp["height"], inp["width"])).astype(np.float32)
    t = session(bundle / graphs["teacher"])
    e = session(bundle / graphs["student_e"])
    out = {"teacher_ms": median_ms(lambda: t.run(None, {"image": x}), runs)}
    out["student_e_ms"] = median_ms(lambda: e.run(None, {"image": x}), runs)
    out["student_d_ms"] = 0.0
    if graphs.get("student_d"):
        d = session(bundle / graphs["student_d"])
        feats = e.run(None, {"image": x})
        feed = {i.name: f for i, f in zip(d.get_inputs(), feats)}
        out["student_d_ms"] = median_ms(lambda: d.run(None, feed), runs)
    out["sequential_ms"] = out["teacher_ms"] + out["student_e_ms"] + out["student_d_ms"]
    out["parallel_ms"] = max(out["teacher_ms"], out["student_e_ms"] + out["student_d_ms"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    manifest = tomllib.loads((args.bundle / "bundle.toml").read_text())
    for precision in ("f32", "int8"):
        graphs = manifest["graphs"].get(precision)
        if graphs:
            result = bench(args.bundle, graphs, manifest["input"], args.runs)
            print(json.dumps({"precision": precision, "onnxruntime": ort.__version__, **result}))


if __name__ == "__main__":
    main()
