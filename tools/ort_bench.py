#!/usr/bin/env python3
"""The onnxruntime reference of `dskd bench`: the same work on the same files, timed the same way.

Per frame: decode the encoded frame (Pillow), resize + normalise (Pillow bilinear, numpy), the
bundle's teacher / student_e / student_d graphs in onnxruntime (one intra-op thread per graph,
as tract runs one graph per thread), the anomaly map in numpy (per level and student
1 - cos, students of a level summed, bilinear upsampling with half-pixel centres and Gaussian
blur with reflected borders, both as separable matrix products), and the verdict (threshold,
8-connected regions with SciPy). A bundle with a memory bank adds its kNN map as the daemon
does (3x3 mean of the chosen teacher levels on the finest one's grid, distance to the nearest
bank row as one matrix product, upsampled, blurred, both maps scaled by their divisors; with a
half-scale bank its teacher graph and map too, added or joined by max as the manifest says); the
students' map reads the manifest's levels and weights. A bundle with an image Gaussian adds
its term to the score (each teacher channel's mean and standard deviation over positions, the
Mahalanobis distance to the Gaussian, offset and scaled). Latency mode: 1 thread (sequential) or 2 (teacher in a second
thread beside Se -> Sd; onnxruntime releases the GIL while it runs). Throughput mode: N worker
threads, one frame each at a time.

Prints one JSON object with the fields of dskd's report (`latency`, `throughput`). Run by
`dskd bench`; its Python comes from tools/ort-venv (onnxruntime, numpy, Pillow, SciPy).
"""
import argparse
import io
import json
import math
import threading
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image
from scipy import ndimage

STAGES = ["decode", "preprocess", "teacher", "student_e", "student_d", "networks", "map", "verdict", "total"]


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of half-pixel bilinear resampling, edges clamped."""
    m = np.zeros((n_out, n_in), np.float32)
    scale = n_in / n_out
    for o in range(n_out):
        src = max((o + 0.5) * scale - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        f = src - i0
        m[o, i0] += 1.0 - f
        m[o, i1] += f
    return m


def blur_matrix(n: int, sigma: float) -> np.ndarray:
    """[n, n] Gaussian blur (2*ceil(4 sigma)+1 taps) with reflect-101 borders."""
    r = int(math.ceil(4 * sigma))
    k = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma * sigma)).astype(np.float32)
    k /= k.sum()
    m = np.zeros((n, n), np.float32)
    period = 2 * (n - 1) if n > 1 else 1
    for y in range(n):
        for j, kv in enumerate(k):
            i = (y + j - r) % period if n > 1 else 0
            if i >= n:
                i = period - i
            m[y, i] += kv
    return m


class Pipeline:
    def __init__(self, bundle: Path, precision: str):
        manifest = tomllib.loads((bundle / "bundle.toml").read_text())
        graphs = manifest["graphs"][precision]
        inp = manifest["input"]
        self.w, self.h = inp["width"], inp["height"]
        self.mean = np.array(inp["mean"], np.float32).reshape(3, 1, 1)
        self.std = np.array(inp["std"], np.float32).reshape(3, 1, 1)
        self.per_image = inp.get("normalize", "fixed") == "per_image"
        cal = manifest["calibration"]
        self.threshold = cal.get("int8_threshold", cal["threshold"]) if precision == "int8" else cal["threshold"]
        self.pixel_threshold = (
            cal.get("int8_pixel_threshold", cal["pixel_threshold"]) if precision == "int8" else cal["pixel_threshold"]
        )
        self.sigma = manifest["map"]["sigma"]
        self.t = session(bundle / graphs["teacher"])
        self.e = session(bundle / graphs["student_e"])
        self.d = session(bundle / graphs["student_d"]) if graphs.get("student_d") else None
        strides = manifest["teacher"]["strides"]
        self.up = [(bilinear_matrix(self.h // s, self.h), bilinear_matrix(self.w // s, self.w)) for s in strides]
        self.blur = (blur_matrix(self.h, self.sigma), blur_matrix(self.w, self.sigma)) if self.sigma > 0 else None
        # The students' map: the levels it reads (empty: all) and each level/student map's weight
        # (`weights[level * students + student]`; empty: all 1).
        self.map_levels = manifest["map"].get("levels", [])
        self.map_weights = manifest["map"].get("weights", [])
        self.bank = self.half = None
        if "memory_bank" in manifest:
            mb = manifest["memory_bank"]
            levels = [l - 1 for l in mb["levels"]]
            self.bank = Bank(read_bank(bundle / mb["file"], mb["rows"], mb["dims"]), levels, strides, self.h, self.w, 1)
            self.divisors = (mb["students_divisor"], mb["knn_divisor"])
            if "half" in mb:
                hb = mb["half"]
                self.t_half = session(bundle / manifest["graphs"]["teacher_half"])
                self.half = Bank(read_bank(bundle / hb["file"], hb["rows"], hb["dims"]), levels, strides, self.h, self.w, 2)
                self.half_fusion = (hb.get("fusion", "sum"), hb["knn_divisor"], hb.get("offset", 0.0))
        self.gaussian = None
        if "image_gaussian" in manifest:
            g = manifest["image_gaussian"]
            p, fit = g["dims"], g[precision]  # each precision has its own fit
            path = bundle / fit["file"]
            self.gaussian = (read_tensor(path, "mean", (p,)), read_tensor(path, "precision", (p, p)),
                             fit["offset"], fit["scale"], g.get("statistics", "mean_std") == "mean_std_max")

    def preprocess(self, img: Image.Image) -> np.ndarray:
        img = img.convert("RGB")
        if img.size != (self.w, self.h):
            img = img.resize((self.w, self.h), Image.BILINEAR)
        x = np.asarray(img, np.float32).transpose(2, 0, 1) / 255.0
        if self.per_image:  # each channel's own statistics, deviation floored as in preprocess.rs
            mean = x.mean(axis=(1, 2), keepdims=True)
            std = np.maximum(x.std(axis=(1, 2), keepdims=True), 0.01)
            return ((x - mean) / std)[None].astype(np.float32)
        return ((x - self.mean) / self.std)[None].astype(np.float32)

    def students(self, x, t):
        s = time.perf_counter()
        e = self.e.run(None, {"image": x})
        t["student_e"] = ms(s)
        d = []
        if self.d is not None:
            s = time.perf_counter()
            d = self.d.run(None, {i.name: f for i, f in zip(self.d.get_inputs(), e)})
            t["student_d"] = ms(s)
        else:
            t["student_d"] = 0.0
        return e, d

    def teacher(self, x, t):
        """The teacher's levels, and the half-scale teacher's (None without one), run one after
        the other on one thread as the daemon does."""
        s = time.perf_counter()
        out = self.t.run(None, {"image": x})
        half = self.t_half.run(None, {"image": x}) if self.half is not None else None
        t["teacher"] = ms(s)
        return out, half

    def anomaly_map(self, teacher, students, half_teacher):
        acc = np.zeros((self.h, self.w), np.float32)
        for i, tl in enumerate(teacher):
            if self.map_levels and i + 1 not in self.map_levels:
                continue
            tl = tl[0]
            tn = np.maximum(np.sqrt((tl * tl).sum(0)), 1e-8)
            level = np.zeros(tl.shape[1:], np.float32)
            for j, s in enumerate(students):
                sl = s[i][0]
                sn = np.maximum(np.sqrt((sl * sl).sum(0)), 1e-8)
                w = self.map_weights[i * len(students) + j] if self.map_weights else 1.0
                level += w * (1.0 - (tl * sl).sum(0) / (tn * sn))
            ay, ax = self.up[i]
            acc += ay @ level @ ax.T
        acc = self.blurred(acc)
        if self.bank is not None:
            acc = acc / self.divisors[0] + self.blurred(self.bank.map(teacher)) / self.divisors[1]
        if self.half is not None:
            fusion, divisor, offset = self.half_fusion
            half = self.blurred(self.half.map(half_teacher)) / divisor
            acc = np.maximum(acc, half + offset) if fusion == "max" else acc + half
        return acc

    def image_score(self, amap, teacher) -> float:
        """The map's peak, plus the image Gaussian's term when the bundle has one."""
        score = float(amap.max())
        if self.gaussian is None:
            return score
        mean, precision, offset, scale, with_max = self.gaussian
        stats = []
        for f in teacher:
            f = f[0].reshape(f.shape[1], -1).astype(np.float64)
            stats += [f.mean(1), f.std(1)] + ([f.max(1)] if with_max else [])
        d = np.concatenate(stats).astype(np.float32) - mean
        return score + scale * (math.sqrt(max(float(d @ precision @ d), 0.0)) - offset)

    def blurred(self, m):
        if self.blur is None:
            return m
        gy, gx = self.blur
        return gy @ m @ gx.T

    def verdict(self, amap, score, src_w, src_h):
        regions = []
        if score >= self.threshold:
            labels, _ = ndimage.label(amap >= self.pixel_threshold, structure=np.ones((3, 3)))
            sx, sy = src_w / self.w, src_h / self.h
            for idx, sl in enumerate(ndimage.find_objects(labels), start=1):
                peak = float(amap[sl][labels[sl] == idx].max())
                if peak >= self.threshold:
                    area = int((labels[sl] == idx).sum() * sx * sy)
                    regions.append((sl[1].start * sx, sl[0].start * sy, area, peak))
        return score, regions

    def frame(self, data: bytes, parallel: ThreadPoolExecutor | None) -> dict:
        t = {}
        start = time.perf_counter()
        img = Image.open(io.BytesIO(data))
        img.load()
        t["decode"] = ms(start)
        s = time.perf_counter()
        x = self.preprocess(img)
        t["preprocess"] = ms(s)
        s = time.perf_counter()
        if parallel is not None:
            fut = parallel.submit(self.teacher, x, t)
            e, d = self.students(x, t)
            teacher, half = fut.result()
        else:
            teacher, half = self.teacher(x, t)
            e, d = self.students(x, t)
        t["networks"] = ms(s)
        s = time.perf_counter()
        amap = self.anomaly_map(teacher, [e, d] if d else [e], half)
        score = self.image_score(amap, teacher)
        t["map"] = ms(s)
        s = time.perf_counter()
        self.score, _ = self.verdict(amap, score, *img.size)
        t["verdict"] = ms(s)
        t["total"] = ms(start)
        return t


class Bank:
    """A memory bank's map as the daemon computes it: the chosen teacher levels (at `scale`:
    2 for the half-scale teacher) 3x3-averaged on the finest one's grid, each position's
    distance to its nearest row as one matrix product, upsampled to the input size."""

    def __init__(self, rows: np.ndarray, levels, strides, h: int, w: int, scale: int):
        self.rows, self.rows_sq, self.levels = rows, (rows * rows).sum(1), levels
        sizes = {l: (h // (strides[l] * scale), w // (strides[l] * scale)) for l in levels}
        self.grid = sizes[min(levels, key=lambda l: strides[l])]
        self.up = {l: (bilinear_matrix(sizes[l][0], self.grid[0]), bilinear_matrix(sizes[l][1], self.grid[1])) for l in levels}
        self.grid_up = (bilinear_matrix(self.grid[0], h), bilinear_matrix(self.grid[1], w))

    def map(self, teacher):
        cols = []
        for l in self.levels:
            f = teacher[l][0]
            ones = np.ones(f.shape[1:], np.float32)
            count = ndimage.uniform_filter(ones, 3, mode="constant")
            pooled = ndimage.uniform_filter(f, (1, 3, 3), mode="constant") / count
            ay, ax = self.up[l]
            cols.append(np.einsum("yi,cij,xj->yxc", ay, pooled, ax).reshape(-1, f.shape[0]))
        q = np.concatenate(cols, 1)
        d2 = (q * q).sum(1) + (self.rows_sq[None, :] - 2.0 * q @ self.rows.T).min(1)
        grid = np.sqrt(np.maximum(d2, 0.0)).reshape(self.grid).astype(np.float32)
        uy, ux = self.grid_up
        return uy @ grid @ ux.T


def read_bank(path: Path, rows: int, dims: int) -> np.ndarray:
    """The f32 tensor `bank` of a safetensors file."""
    return read_tensor(path, "bank", (rows, dims))


def read_tensor(path: Path, name: str, shape) -> np.ndarray:
    """The f32 tensor `name` of a safetensors file, in `shape`."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    start, end = json.loads(raw[8 : 8 + n])[name]["data_offsets"]
    return np.frombuffer(raw[8 + n + start : 8 + n + end], np.float32).reshape(shape)


def ms(since: float) -> float:
    return (time.perf_counter() - since) * 1e3


def stats(values):
    v = sorted(values)
    at = lambda q: v[round((len(v) - 1) * q)]
    return {"median_ms": at(0.5), "p99_ms": at(0.99)}


def latency(p: Pipeline, data: bytes, frames: int, warmup: int, threads: int, precision: str) -> dict:
    pool = ThreadPoolExecutor(1) if threads > 1 else None
    for _ in range(warmup):
        p.frame(data, pool)
    runs = [p.frame(data, pool) for _ in range(frames)]
    if pool:
        pool.shutdown()
    return {
        "precision": precision,
        "threads": threads,
        "stages": [[s, stats([r[s] for r in runs])] for s in STAGES],
    }


def throughput(p: Pipeline, data: bytes, frames: int, threads: int, precision: str) -> dict:
    lock = threading.Lock()
    counter = [0]
    times = []

    def worker():
        while True:
            with lock:
                if counter[0] >= frames:
                    return
                counter[0] += 1
            t = p.frame(data, None)["total"]
            with lock:
                times.append(t)

    p.frame(data, None)
    start = time.perf_counter()
    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - start
    return {"precision": precision, "threads": threads, "frames_per_s": frames / wall, "frame": stats(times)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--image", type=Path, required=True, help="encoded frame (JPEG, PNG, ...)")
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args()
    data = args.image.read_bytes()
    manifest = tomllib.loads((args.bundle / "bundle.toml").read_text())
    out = {"onnxruntime": ort.__version__, "latency": [], "throughput": [], "scores": []}
    for precision in ("f32", "int8"):
        if not manifest["graphs"].get(precision):
            continue
        p = Pipeline(args.bundle, precision)
        for threads in (1, 2):
            out["latency"].append(latency(p, data, args.frames, args.warmup, threads, precision))
        for threads in [int(t) for t in args.threads.split(",")]:
            out["throughput"].append(throughput(p, data, args.frames, threads, precision))
        # The frame's image score: the same work gives the same number as dskd's.
        out["scores"].append([precision, p.score])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
