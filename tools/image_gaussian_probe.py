#!/usr/bin/env python3
"""The image Gaussian's probe of docs/RESULTS.md §0g: how well image-level statistics of a
bundle's teacher features separate defective images, with no training.

Runs the bundle's teacher graph (onnxruntime, 256² or the bundle's size, squashed, fixed
normalisation as the manifest says) on every image of a split file, pools each level's
per-channel mean, standard deviation, maximum and 90th percentile over positions, fits a
Gaussian (Ledoit-Wolf shrinkage, optionally scaled) on the `train` lines for each choice of
statistics and levels, and prints image AUROC per defect type, the misses at the 99th
percentile of the `val` lines' distances, and the misses when 2 or 4 test normals are let
through. `--teacher-onnx` takes the levels from another graph instead, e.g. the whole
EfficientNet-Lite0 with two deeper levels (`tools/lite0_levels_onnx.py`, §0h):

    $(tools/ort-venv) tools/image_gaussian_probe.py --bundle models/demo --split magnetic-tile/split.tsv
    $(tools/ort-venv) tools/image_gaussian_probe.py --bundle B --split S --teacher-onnx lite0-levels.onnx \
        --levels 1,2,3 1,2,3,4 1,2,3,5 2,3,4 4 5 --shrink-scale 0.5 1 2
"""
import argparse
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image


def kind_of(rel: str) -> str:
    """A split line's image kind: its first folder, or the second in an MVTec layout
    (`train/good/...`, `test/crack/...`)."""
    parts = rel.split("/")
    return parts[1] if parts[0] in ("train", "test") else parts[0]


def features(bundle: Path, split: Path, teacher: Path | None):
    """Per image and teacher level: each channel's mean, std, max and 90th percentile over positions."""
    m = tomllib.loads((bundle / "bundle.toml").read_text())
    w, h = m["input"]["width"], m["input"]["height"]
    mean = np.array(m["input"]["mean"], np.float32).reshape(3, 1, 1)
    std = np.array(m["input"]["std"], np.float32).reshape(3, 1, 1)
    graph = teacher or bundle / m["graphs"]["f32"]["teacher"]
    sess = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    rows = [l.rstrip("\n").split("\t") for l in split.read_text().splitlines() if l and not l.startswith("#")]
    roles, kinds, stats = [], [], []
    for role, path in rows:
        img = Image.open(split.parent / path).convert("RGB").resize((w, h), Image.BILINEAR)
        x = ((np.asarray(img, np.float32).transpose(2, 0, 1) / 255 - mean) / std)[None]
        levels = [f[0].reshape(f.shape[1], -1) for f in sess.run(None, {"image": x})]
        stats.append([[f.mean(1), f.std(1), f.max(1), np.quantile(f, 0.9, axis=1)] for f in levels])
        roles.append(role)
        kinds.append(kind_of(path))
    return np.array(roles), np.array(kinds), stats


def auroc(neg, pos):
    s = np.concatenate([neg, pos])
    r = s.argsort().argsort() + 1
    return (r[len(neg):].sum() - len(pos) * (len(pos) + 1) / 2) / (len(neg) * len(pos))


def shrunk_covariance(x, shrink_scale=1.0):
    """Ledoit-Wolf's shrinkage towards a scaled identity (its intensity times `shrink_scale`)."""
    n, p = x.shape
    s = x.T @ x / n
    mu = np.trace(s) / p
    delta = ((s - mu * np.eye(p)) ** 2).sum()
    # sum over rows of ||x x^T - s||^2, expanded so no p x p matrix per row is formed
    norms = (x * x).sum(1)
    scatter = ((norms**2).sum() - 2 * np.einsum("ij,jk,ik->", x, s, x) + n * (s * s).sum()) / n**2
    a = min(1.0, shrink_scale * min(scatter, delta) / delta)
    return (1 - a) * s + a * mu * np.eye(p)


def distances(train, x, shrink_scale=1.0):
    mean = train.mean(0)
    precision = np.linalg.inv(shrunk_covariance(train - mean, shrink_scale))
    d = x - mean
    return np.sqrt(np.einsum("ij,jk,ik->i", d, precision, d))


STATS = ("mean", "std", "max", "p90")


def image_row(name, test, normal, kinds, val):
    """Image AUROC of the test images' scores `test` (`normal` and `kinds` per test image),
    misses at the `val` scores' 99th percentile (and the false alarms that gives), and misses
    when 2 or 4 test normals are let through (the low end of the ROC), per defect type too."""
    th = np.quantile(val, 0.99)
    neg, pos = test[normal], test[~normal]
    top = np.sort(neg)[::-1]
    per = " ".join(f"{k.removeprefix('MT_')} {auroc(neg, test[kinds == k]):.3f}" for k in sorted(set(kinds[~normal])))
    print(
        f"{name:34s} image AUROC {auroc(neg, pos):.3f}  FA {(neg >= th).mean():.1%} misses {(pos < th).mean():.1%}"
        f"  at 2 / 4 test FA: {(pos <= top[2]).mean():.1%} / {(pos <= top[4]).mean():.1%} | {per}",
        flush=True,
    )


def row(name, d, roles, kinds, good):
    """[`image_row`] of the distances `d` of every split line."""
    test = roles == "test"
    image_row(name, d[test], good[test], kinds[test], d[roles == "val"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--normal-kind", default="MT_Free", help="the split's folder of normal images")
    ap.add_argument("--teacher-onnx", type=Path, help="another graph to take levels from (same input)")
    ap.add_argument("--levels", nargs="+", default=["1,2,3"], help="level sets (1-based) for mean + std")
    ap.add_argument("--shrink-scale", type=float, nargs="+", default=[1.0])
    a = ap.parse_args()
    roles, kinds, stats = features(a.bundle, a.split, a.teacher_onnx)
    good = kinds == a.normal_kind
    train = roles == "train"

    def x(levels, kinds_):
        cols = [np.stack([s[l][STATS.index(k)] for s in stats]) for l in levels for k in kinds_]
        return np.concatenate(cols, 1).astype(np.float64)

    n_levels = len(stats[0])
    for level in range(n_levels):
        for k in STATS:
            row(f"{k}{level + 1}", distances(x([level], [k])[train], x([level], [k])), roles, kinds, good)
    base = list(range(min(3, n_levels)))
    for kinds_ in (["mean"], ["mean", "std"], ["mean", "std", "max"], ["mean", "std", "p90"], ["max"], ["p90"]):
        f = x(base, kinds_)
        row("+".join(kinds_) + " of levels 1-3", distances(f[train], f), roles, kinds, good)
    for spec in a.levels:
        levels = [int(v) - 1 for v in spec.split(",")]
        f = x(levels, ["mean", "std"])
        for scale in a.shrink_scale:
            d = distances(f[train], f, scale)
            row(f"mean+std of levels {spec}, shrinkage x{scale}", d, roles, kinds, good)


if __name__ == "__main__":
    main()
