#!/usr/bin/env python3
"""The image Gaussian's probe of docs/RESULTS.md §0g: how well image-level statistics of a
bundle's teacher features separate defective images, with no training.

Runs the bundle's teacher graph (onnxruntime, 256² or the bundle's size, squashed, fixed
normalisation as the manifest says) on every image of a split file, pools each level's
per-channel mean and standard deviation over positions, fits a Gaussian (Ledoit-Wolf
shrinkage) on the `train` lines for each choice of statistics, and prints image AUROC per
defect type and the misses at the 99th percentile of the `val` lines' distances.

    $(tools/ort-venv) tools/image_gaussian_probe.py --bundle models/demo --split magnetic-tile/split.tsv
"""
import argparse
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image


def features(bundle: Path, split: Path):
    m = tomllib.loads((bundle / "bundle.toml").read_text())
    w, h = m["input"]["width"], m["input"]["height"]
    mean = np.array(m["input"]["mean"], np.float32).reshape(3, 1, 1)
    std = np.array(m["input"]["std"], np.float32).reshape(3, 1, 1)
    sess = ort.InferenceSession(str(bundle / m["graphs"]["f32"]["teacher"]), providers=["CPUExecutionProvider"])
    rows = [l.rstrip("\n").split("\t") for l in split.read_text().splitlines() if l and not l.startswith("#")]
    roles, kinds, stats = [], [], []
    for role, path in rows:
        img = Image.open(split.parent / path).convert("RGB").resize((w, h), Image.BILINEAR)
        x = ((np.asarray(img, np.float32).transpose(2, 0, 1) / 255 - mean) / std)[None]
        levels = [f[0].reshape(f.shape[1], -1) for f in sess.run(None, {"image": x})]
        stats.append([s for f in levels for s in (f.mean(1), f.std(1))])
        roles.append(role)
        kinds.append(path.split("/")[0])
    return np.array(roles), np.array(kinds), stats


def auroc(neg, pos):
    s = np.concatenate([neg, pos])
    r = s.argsort().argsort() + 1
    return (r[len(neg):].sum() - len(pos) * (len(pos) + 1) / 2) / (len(neg) * len(pos))


def shrunk_covariance(x):
    n, p = x.shape
    s = x.T @ x / n
    mu = np.trace(s) / p
    delta = ((s - mu * np.eye(p)) ** 2).sum()
    scatter = sum(((np.outer(r, r) - s) ** 2).sum() for r in x) / n**2
    a = min(scatter, delta) / delta
    return (1 - a) * s + a * mu * np.eye(p)


def distances(train, x):
    mean = train.mean(0)
    precision = np.linalg.inv(shrunk_covariance(train - mean))
    d = x - mean
    return np.sqrt(np.einsum("ij,jk,ik->i", d, precision, d))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--normal-kind", default="MT_Free", help="the split's folder of normal images")
    a = ap.parse_args()
    roles, kinds, stats = features(a.bundle, a.split)
    names = [f"{s}{l + 1}" for l in range(len(stats[0]) // 2) for s in ("mean", "std")]
    train, val, test = roles == "train", roles == "val", roles == "test"
    good = kinds == a.normal_kind
    choices = [[n] for n in names] + [[n for n in names if n.startswith("mean")], names]
    for choice in choices:
        x = np.concatenate([np.stack([s[names.index(n)] for s in stats]) for n in choice], 1).astype(np.float64)
        d = distances(x[train], x)
        th = np.quantile(d[val], 0.99)
        neg, pos = d[test & good], d[test & ~good]
        per = " ".join(f"{k} {auroc(neg, d[test & (kinds == k)]):.3f}" for k in sorted(set(kinds[test & ~good])))
        print(f"{'+'.join(choice):40s} image AUROC {auroc(neg, pos):.3f}  misses {(pos < th).mean():.1%}  | {per}")


if __name__ == "__main__":
    main()
