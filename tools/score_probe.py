#!/usr/bin/env python3
"""Offline probes on the maps `tools/local_stats_probe.py --save` keeps (docs/RESULTS.md §0h):
no network runs, seconds per variant.

1. Where pooled pixel AUROC is lost: a defect type's defect pixels ranked against the normal
   images' pixels, against its own images' defect-free pixels, and against the other defect
   types' images' defect-free pixels; each type's map level inside, near (< 16 px) and far
   (>= 32 px) from its defects, beside the normal images'.
2. The image Gaussian's term added to every position of the map (weights 0.25-1): pixel
   AUROC, per type, AUPRO.
3. Rules joining the map's peak and the Gaussian's term into the image score (each brought to
   the `val` normals' mean and spread): sum (the bundle's), max, positive parts summed, their
   root-sum-square; with `--flip`'s maps, the peak of the map averaged with its mirror's.
   Misses at the `val` scores' 99th percentile and when 2 or 4 test normals are let through.

    $(tools/ort-venv) tools/score_probe.py out/maps.npz [--normal-kind MT_Free]
"""
import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).parent))
from image_gaussian_probe import auroc, image_row  # noqa: E402
from local_stats_probe import aupro, per_type_pixel_auroc  # noqa: E402


def where_pixels_are_lost(maps, masks, kinds, normal):
    print("1. defect pixels of each type ranked against three groups of defect-free pixels")
    for kind in sorted(set(kinds[~normal])):
        own, others = kinds == kind, (~normal) & (kinds != kind)
        pos = maps[own][masks[own]]
        groups = [("normal images", maps[normal].ravel()), ("own images", maps[own][~masks[own]]),
                  ("other types' images", maps[others][~masks[others]])]
        print(f"  {kind.removeprefix('MT_'):9s} " + "  ".join(f"vs {g}: {auroc(n[::7], pos[::7]):.3f}" for g, n in groups))
    print(f"  map level: normal images mean {maps[normal].mean():.2f}, "
          f"99th pct {np.quantile(maps[normal][:, ::4, ::4], 0.99):.2f}")
    for kind in sorted(set(kinds[~normal])):
        inside, near, far = [], [], []
        for i in np.flatnonzero(kinds == kind):
            d = ndimage.distance_transform_edt(~masks[i])
            inside.append(maps[i][masks[i]])
            near.append(maps[i][(d > 0) & (d < 16)])
            far.append(maps[i][d >= 32])
        inside, near, far = (np.concatenate(v) for v in (inside, near, far))
        print(f"  {kind.removeprefix('MT_'):9s} inside {inside.mean():.2f}  near {near.mean():.2f}  far {far.mean():.2f} "
              f"(99th pct {np.quantile(far, 0.99):.2f})")


def term_in_the_map(maps, masks, kinds, normal, term):
    print("2. the image Gaussian's term added to every position of the map")
    sub = (slice(None), slice(None, None, 4), slice(None, None, 4))
    for weight in (0.0, 0.25, 0.5, 1.0):
        m, k = (maps + weight * term[:, None, None])[sub], masks[sub]
        print(f"  weight {weight:4.2f}: pixel AUROC {auroc(m[~k], m[k]):.3f}  AUPRO {aupro(m, k):.3f} | "
              + per_type_pixel_auroc(m, k, kinds, normal))


def fusion_rules(z, maps, kinds, normal, scores, peak, term):
    print("3. rules joining the map's peak and the Gaussian's term")
    vpeak = z["val_peaks"]
    vterm = z["val_scores"] - vpeak

    def show(name, test, val):
        image_row("  " + name, test, normal, kinds, val)

    zp = lambda x: (x - vpeak.mean()) / vpeak.std()  # noqa: E731
    zt = lambda x: (x - vterm.mean()) / vterm.std()  # noqa: E731
    pos = lambda x: np.maximum(x, 0)  # noqa: E731
    show("peak only", peak, vpeak)
    show("term only", term, vterm)
    show("sum (the bundle's)", scores, z["val_scores"])
    show("max", np.maximum(zp(peak), zt(term)), np.maximum(zp(vpeak), zt(vterm)))
    show("positive parts summed", pos(zp(peak)) + pos(zt(term)), pos(zp(vpeak)) + pos(zt(vterm)))
    show("root-sum-square", np.hypot(pos(zp(peak)), pos(zt(term))), np.hypot(pos(zp(vpeak)), pos(zt(vterm))))
    if "flipped" in z:
        mean_peak = ((maps + z["flipped"].astype(np.float32)) / 2).reshape(len(maps), -1).max(1)
        vmean = z["val_mean_peaks"]
        scale = vpeak.std() / vmean.std()  # the peak's spread, so the sum keeps its balance
        show("mirror-averaged peak", mean_peak, vmean)
        show("mirror-averaged + term", mean_peak * scale + term, vmean * scale + vterm)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("maps", type=Path)
    ap.add_argument("--normal-kind", default="MT_Free")
    a = ap.parse_args()
    z = np.load(a.maps)
    maps, masks, kinds, scores = z["maps"].astype(np.float32), z["masks"], z["kinds"], z["scores"]
    normal = kinds == a.normal_kind
    peak = maps.reshape(len(maps), -1).max(1)
    term = scores - peak
    where_pixels_are_lost(maps, masks, kinds, normal)
    term_in_the_map(maps, masks, kinds, normal, term)
    fusion_rules(z, maps, kinds, normal, scores, peak, term)


if __name__ == "__main__":
    main()
