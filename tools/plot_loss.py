#!/usr/bin/env python3
"""Loss curve of a dskd-train run: train_log.csv (from the checkpoints folder) -> PNG.

Usage: python3 tools/plot_loss.py CKPT/train_log.csv OUT.png [--title TEXT]
Needs matplotlib (present on the GPU machines; `pip install matplotlib` elsewhere).
"""

import argparse
import csv

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("log")
    ap.add_argument("out")
    ap.add_argument("--title", default="dskd-train")
    a = ap.parse_args()
    steps, train, vsteps, val, epochs = [], [], [], [], []
    with open(a.log) as f:
        for r in csv.DictReader(f):
            if r["train_loss"]:
                steps.append(int(r["step"]))
                train.append(float(r["train_loss"]))
            if r["val_loss"]:
                vsteps.append(int(r["step"]))
                val.append(float(r["val_loss"]))
                epochs.append(int(r["epoch"]))
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot(steps, train, lw=0.8, alpha=0.6, label="train loss (every 10th step)")
    ax.plot(vsteps, val, lw=1.8, label="val loss (held-out normals, per epoch)")
    if val:
        best = min(range(len(val)), key=val.__getitem__)
        ax.scatter([vsteps[best]], [val[best]], color="black", zorder=3, label=f"kept: epoch {epochs[best]}, {val[best]:.4f}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (sum of 1 - cos over levels and students)")
    ax.set_title(a.title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(a.out)


if __name__ == "__main__":
    main()
