#!/usr/bin/env python3
"""PyTorch reference for dskd-train's speed: the same DSKD students, loss and optimiser.

Times what one `dskd-train` step does, so the two can be compared as a ratio on the same GPU:
Se (MobileNetV2 layout up to features.13, random init) + DF embedding + Sd (transposed-conv
decoder), per-pixel cosine loss against the cached teacher pyramid (24/32/96 channels at
strides 4/8/16), Adam(betas 0.5, 0.999). Like dskd-train, the teacher's features are computed
once and every step copies its batch (image + teacher levels) from host memory to the device.
Plain float32 (TF32 off), as burn runs; `--amp` adds a bf16 autocast run for the record.

Prints one JSON line per configuration: {"impl": "torch", "batch", "size", "images_per_s", ...}.
Usage: python3 tools/torch_dskd.py [--size 256] [--batch 16] [--steps 60] [--warmup 10]
"""

import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn(cin, cout, k, stride, groups=1, act="relu"):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act == "relu":
        layers.append(nn.ReLU(inplace=True))
    elif act == "relu6":
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        hidden = cin * t
        layers = [conv_bn(cin, hidden, 1, 1, act="relu6")] if t != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden, act="relu6"), conv_bn(hidden, cout, 1, 1, act=None)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class MobileNetV2Taps(nn.Module):
    """torchvision's MobileNetV2 features up to block 13; taps after blocks 3, 6, 13."""

    STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1)]
    TAPS = (3, 6, 13)

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 32, 3, 2, act="relu6")
        blocks, cin = [], 32
        for t, c, n, s in self.STAGES:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x):
        x, taps = self.stem(x), []
        for i, b in enumerate(self.blocks):
            x = b(x)
            if i + 1 in self.TAPS:
                taps.append(x)
        return taps


class ResBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.a = conv_bn(cin, cout, 3, stride, act="relu")
        self.b = conv_bn(cout, cout, 3, 1, act=None)
        self.skip = conv_bn(cin, cout, 1, stride, act=None) if (cin != cout or stride != 1) else nn.Identity()

    def forward(self, x):
        return F.relu(self.b(self.a(x)) + self.skip(x))


class Students(nn.Module):
    """Se + DF embedding + Sd, shaped as src/train/nets/students.rs."""

    def __init__(self, channels=(24, 32, 96), strides=(4, 8, 16)):
        super().__init__()
        self.se = MobileNetV2Taps()
        c3, s3 = channels[-1], strides[-1]
        self.down = nn.ModuleList()
        for c, s in zip(channels, strides):
            steps = (s3 // s).bit_length() - 1
            self.down.append(nn.Sequential(*[conv_bn(c if k == 0 else c3, c3, 3, 2, act="relu") for k in range(steps)]))
        b = 2 * c3
        self.fuse = nn.Sequential(ResBlock(3 * c3, b, 2), ResBlock(b, b, 1))
        self.up = nn.ModuleList()
        cin = b
        for c in reversed(channels):
            hidden = max(2 * c, 48)
            self.up.append(
                nn.ModuleDict(
                    {
                        "up": nn.Sequential(nn.ConvTranspose2d(cin, hidden, 2, 2, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True)),
                        "refine": conv_bn(hidden, hidden, 3, 1, act="relu"),
                        "head": nn.Conv2d(hidden, c, 1),
                    }
                )
            )
            cin = hidden

    def forward(self, x):
        e = self.se(x)
        aligned = [d(l) for d, l in zip(self.down, e)]
        x = self.fuse(torch.cat(aligned, 1))
        outs = []
        for blk in self.up:
            x = blk["refine"](blk["up"](x))
            outs.append(blk["head"](x))
        return e, outs[::-1]


def cosine_distance(t, s):
    return (1 - F.cosine_similarity(t, s, dim=1, eps=1e-8)).mean()


def loss_fn(teacher, e, d):
    return sum(cosine_distance(t, s) for st in (e, d) for t, s in zip(teacher, st))


def run(size, batch, steps, warmup, amp, device):
    torch.manual_seed(0)
    model = Students().to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=0.005, betas=(0.5, 0.999))
    # A small pool of host batches (pinned, as a tuned loader would), copied up each step.
    pool = []
    for _ in range(4):
        x = torch.randn(batch, 3, size, size).pin_memory()
        t = [torch.randn(batch, c, size // s, size // s).pin_memory() for c, s in ((24, 4), (32, 8), (96, 16))]
        pool.append((x, t))
    losses = []

    def step(i):
        x, t = pool[i % len(pool)]
        x = x.to(device, non_blocking=True)
        t = [l.to(device, non_blocking=True) for l in t]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            e, d = model(x)
            loss = loss_fn(t, [v.float() for v in e], [v.float() for v in d])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i % 10 == 0:
            losses.append(loss.item())  # dskd-train reads its loss every 10 steps too

    for i in range(warmup):
        step(i)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    return {
        "impl": "torch",
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0),
        "precision": "bf16-autocast" if amp else "fp32",
        "size": size,
        "batch": batch,
        "steps": steps,
        "images_per_s": round(steps * batch / wall, 1),
        "ms_per_step": round(1e3 * wall / steps, 2),
        "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, nargs="+", default=[16])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--amp", action="store_true")
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    for b in a.batch:
        print(json.dumps(run(a.size, b, a.steps, a.warmup, False, "cuda")), flush=True)
        if a.amp:
            print(json.dumps(run(a.size, b, a.steps, a.warmup, True, "cuda")), flush=True)


if __name__ == "__main__":
    main()
