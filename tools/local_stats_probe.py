#!/usr/bin/env python3
"""Probe for a windowed version of the image Gaussian (docs/RESULTS.md §0h): how much the
pixel-level figures move when each position's anomaly map value gets a term from the
statistics of the teacher's features in a window around it, with no training.

For every image of a split file it runs a bundle's own pipeline as `tools/ort_bench.py` does
(onnxruntime: teacher, students, memory bank, image Gaussian) and also takes, at each point of
a grid, every teacher channel's mean and standard deviation over a square window around it
(`--window` image pixels wide, each level's cells counted at its own stride). One Gaussian is
fitted to the `train` images' windows (all grid points pooled: no per-position model, so a
surface's windows share one), each window's Mahalanobis distance to it is upsampled to the map
and added to the bundle's map, divided by the spread of the `val` images' peak distances (the
rule the bundle uses for its memory bank). Prints image AUROC, pooled and per-type pixel
AUROC, AUPRO and misses at the bundle's own calibration for the bundle as it is and for each
window and weight.

`--save` keeps the test images' maps, masks and scores (and the `val` images' peaks) for
`tools/score_probe.py`; `--flip` also keeps each map of the mirrored image. Split files may
name images in a Magnetic-Tile layout (`MT_Crack/...`, masks beside them) or an MVTec one
(`test/crack/...`, masks under `ground_truth/`).

    $(tools/ort-venv) tools/local_stats_probe.py --bundle B --split magnetic-tile/split.tsv \
        --window 64 128 --weight 0.5 1 2
    $(tools/ort-venv) tools/local_stats_probe.py --bundle B --split S --window --flip --save maps.npz
"""
import argparse
import sys
import tomllib
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).parent))
from image_gaussian_probe import auroc, kind_of, shrunk_covariance  # noqa: E402
from ort_bench import Pipeline, bilinear_matrix  # noqa: E402


def read_split(split: Path):
    """(role, image, kind) per line."""
    rows = [l.split("\t") for l in split.read_text().splitlines() if l and not l.startswith("#")]
    return [(role, split.parent / rel, kind_of(rel)) for role, rel in rows]


def mask_of(image: Path):
    """The mask beside a JPEG image (`x.png`), or MVTec's `ground_truth/<kind>/<stem>_mask.png`."""
    beside = image.with_suffix(".png")
    if beside != image:
        return beside
    return image.parent.parent.parent / "ground_truth" / image.parent.name / f"{image.stem}_mask.png"


def window_stats(teacher, strides, window: int, grid: int, size: int):
    """Per grid point, every channel's mean and std over the window centred on it: [points, dims]."""
    centres = np.arange(grid // 2, size, grid)
    out = []
    for f, s in zip(teacher, strides):
        f = f[0].astype(np.float64)
        k = max(1, round(window / s))
        m = ndimage.uniform_filter(f, size=(1, k, k), mode="reflect")
        m2 = ndimage.uniform_filter(f * f, size=(1, k, k), mode="reflect")
        idx = np.minimum(centres // s, f.shape[1] - 1)
        m, m2 = m[:, idx][:, :, idx], m2[:, idx][:, :, idx]
        out += [m, np.sqrt(np.maximum(m2 - m * m, 0.0))]
    x = np.concatenate(out, 0)  # [dims, g, g]
    return x.reshape(x.shape[0], -1).T


def aupro(maps, masks, limit=0.3):
    scores, region, sizes = [], [], []
    for m, k in zip(maps, masks):
        lab, n = ndimage.label(k, structure=np.ones((3, 3)))
        lab = np.where(lab > 0, lab + len(sizes), 0)
        sizes += list(np.bincount(lab.ravel(), minlength=len(sizes) + n + 1)[len(sizes) + 1 :])
        scores.append(m.ravel())
        region.append(lab.ravel())
    scores, region = np.concatenate(scores), np.concatenate(region)
    sizes = np.array([0] + sizes, np.float64)
    order = np.argsort(-scores, kind="stable")
    r = region[order]
    fpr = np.cumsum(r == 0) / (r == 0).sum()
    w = np.where(r > 0, 1.0 / np.maximum(sizes[r], 1), 0.0)
    pro = np.cumsum(w) / (len(sizes) - 1)
    keep = fpr <= limit
    x, y = np.concatenate([[0], fpr[keep]]), np.concatenate([[0], pro[keep]])
    return float(np.trapezoid(y, x) / limit)


def per_type_pixel_auroc(maps, masks, kinds, normal):
    """Each defect type's pixel AUROC over its images and the normal ones (maps and masks
    stacked `[images, h, w]`), as `dskd eval`'s per-type rows."""
    per = []
    for kind in sorted(set(kinds[~normal])):
        pick = normal | (kinds == kind)
        m, k = maps[pick], masks[pick]
        per.append(f"{kind.removeprefix('MT_')} {auroc(m[~k], m[k]):.3f}")
    return " ".join(per)


def report(name, maps, scores, masks, kinds, defective, threshold):
    maps, masks = np.stack(maps), np.stack(masks)
    neg = scores[~defective]
    print(
        f"{name:28s} img {auroc(neg, scores[defective]):.3f}  px {auroc(maps[~masks], maps[masks]):.3f}  "
        f"aupro {aupro(maps, masks):.3f}  FA {(neg >= threshold).mean():.1%}  "
        f"miss {(scores[defective] < threshold).mean():.1%} | {per_type_pixel_auroc(maps, masks, kinds, ~defective)}",
        flush=True,
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--window", type=int, nargs="*", default=[64, 128])
    ap.add_argument("--grid", type=int, default=16, help="grid spacing in image pixels")
    ap.add_argument("--weight", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    ap.add_argument("--flip", action="store_true", help="also save each map of the mirrored image")
    ap.add_argument("--save", type=Path, help="write the test images' maps, masks and scores here (.npz)")
    ap.add_argument("--train-limit", type=int, default=0, help="use at most this many train images")
    a = ap.parse_args()
    p = Pipeline(a.bundle, "f32")
    strides = tomllib.loads((a.bundle / "bundle.toml").read_text())["teacher"]["strides"]
    rows = read_split(a.split)
    if a.train_limit:
        train = [r for r in rows if r[0] == "train"][: a.train_limit]
        rows = train + [r for r in rows if r[0] != "train"]
    stats = {w: [] for w in a.window}
    roles, kinds, maps, scores, masks, flipped = [], [], [], [], [], []
    for n, (role, path, kind) in enumerate(rows):
        img = Image.open(path)
        x = p.preprocess(img)
        teacher, half = p.teacher(x, {})
        for w in a.window:
            stats[w].append(window_stats(teacher, strides, w, a.grid, p.h).astype(np.float32))
        roles.append(role)
        kinds.append(kind)
        if role != "train":
            e, d = p.students(x, {})
            amap = p.anomaly_map(teacher, [e, d] if d else [e], half)
            maps.append(amap)
            scores.append(p.image_score(amap, teacher))
            if a.flip:  # the map of the mirrored image, mirrored back: for a test-time average
                xf = np.ascontiguousarray(x[..., ::-1])
                tf, hf = p.teacher(xf, {})
                ef, df = p.students(xf, {})
                flipped.append(p.anomaly_map(tf, [ef, df] if df else [ef], hf)[:, ::-1])
            mp = mask_of(path)
            if role == "test" and mp.is_file():
                k = Image.open(mp).convert("L").resize((p.w, p.h), Image.NEAREST)
                masks.append(np.asarray(k) > 0)
            else:
                masks.append(np.zeros((p.h, p.w), bool))
        if n % 100 == 0:
            print(f"{n}/{len(rows)}", file=sys.stderr, flush=True)
    roles, kinds = np.array(roles), np.array(kinds)
    ev = roles != "train"
    ev_roles, ev_kinds, scores = roles[ev], kinds[ev], np.array(scores)
    test, val = ev_roles == "test", ev_roles == "val"
    normal_kind = kinds[roles == "train"][0]
    defective = ev_kinds != normal_kind
    tmaps = [m for m, t in zip(maps, test) if t]
    tmasks = [m for m, t in zip(masks, test) if t]
    if a.save:
        peaks = np.array([m.max() for m in maps])
        extra = {}
        if a.flip:
            extra = dict(flipped=np.stack([f for f, t in zip(flipped, test) if t]).astype(np.float16),
                         val_flipped_peaks=np.array([f.max() for f in flipped])[val],
                         val_mean_peaks=np.array([(m + f).max() / 2 for m, f in zip(maps, flipped)])[val])
        np.savez_compressed(a.save, maps=np.stack(tmaps).astype(np.float16), masks=np.stack(tmasks),
                            scores=scores[test], kinds=ev_kinds[test], val_scores=scores[val],
                            val_peaks=peaks[val], threshold=p.threshold, **extra)
    report("bundle", tmaps, scores[test], tmasks, ev_kinds[test], defective[test], p.threshold)

    g = p.h // a.grid
    up = (bilinear_matrix(g, p.h), bilinear_matrix(g, p.w))
    for w in a.window:
        x = [s for s, r in zip(stats[w], roles) if r == "train"]
        x = np.concatenate(x).astype(np.float64)
        mean = x.mean(0)
        prec = np.linalg.inv(shrunk_covariance(x - mean))
        dist = []
        for s, r in zip(stats[w], roles):
            if r == "train":
                continue
            d = s.astype(np.float64) - mean
            dm = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, prec, d), 0)).reshape(g, g)
            dist.append((up[0] @ dm @ up[1].T).astype(np.float32))
        peaks = np.array([m.max() for m in dist])
        spread = peaks[val].std()
        vpeak = np.array([m.max() for m in maps])[val]
        for wt in a.weight:
            fused = [m + wt * l / spread * vpeak.std() for m, l in zip(maps, dist)]
            # the added term moves every score: the threshold is recalibrated on val as the bundle does
            fs = scores - np.array([m.max() for m in maps]) + np.array([f.max() for f in fused])
            th = np.quantile(fs[val], 0.99)
            report(f"window {w} weight {wt}", [f for f, t in zip(fused, test) if t], fs[test], tmasks,
                   ev_kinds[test], defective[test], th)


if __name__ == "__main__":
    main()
