#!/usr/bin/env python3
"""Compares `dskd infer` scores of two builds on the same images (cross/build-aarch64 --test).

Reads DIR/x86-{f32,int8}.jsonl and DIR/arm-{f32,int8}.jsonl (one JSON object per image) and
prints, per precision, the largest score difference as a fraction of the threshold. Fails when
f32 differs by more than 1e-4 of the threshold (the same graphs in f32: only the order of
float operations differs between the x86 and ARM kernels) or int8 by more than 0.02 (tract
quantises activations on each CPU with its own kernels; 0.02 keeps verdicts equal for every
frame not within 2% of the threshold), or when a verdict differs.
"""
import json
import sys
from pathlib import Path

TOLERANCE = {"f32": 1e-4, "int8": 0.02}


def load(path: Path) -> dict:
    return {r["image"]: r for r in map(json.loads, path.read_text().splitlines()) if r.get("image")}


def main() -> int:
    d = Path(sys.argv[1])
    ok = True
    for precision, tol in TOLERANCE.items():
        x86, arm = load(d / f"x86-{precision}.jsonl"), load(d / f"arm-{precision}.jsonl")
        if not x86 or x86.keys() != arm.keys():
            print(f"{precision}: the two runs inspected different images")
            return 1
        worst = max(abs(x86[k]["score"] - arm[k]["score"]) / x86[k]["threshold"] for k in x86)
        same = all(x86[k]["verdict"] == arm[k]["verdict"] for k in x86)
        good = worst <= tol and same
        ok &= good
        print(
            f"{precision}: {len(x86)} images, largest |score x86 - score aarch64| = {worst:.2e} of the threshold "
            f"(tolerance {tol:g}), verdicts {'equal' if same else 'DIFFER'}: {'ok' if good else 'FAIL'}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
