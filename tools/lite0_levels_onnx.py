#!/usr/bin/env python3
"""Writes an ONNX graph of the whole EfficientNet-Lite0 (every block and the 1280-channel head
conv, BatchNorm folded) whose outputs are five levels: the ends of blocks 4, 10 and 14 (the
`efficientnet_lite0_s32` teacher's taps, bit for bit the same values as a bundle's teacher
graph), block 15 (320 channels) and the head (1280), all at 256² input. For probes of deeper
levels (`tools/image_gaussian_probe.py --teacher-onnx`, docs/RESULTS.md §0h) without changing
the trainer. Needs the `onnx` package in the venv (`$(tools/ort-venv) -m pip install onnx`).

    $(tools/ort-venv) tools/lite0_levels_onnx.py --weights efficientnet_lite0-imagenet.safetensors --out lite0-levels.onnx
"""
import argparse
import json
import struct

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# (expansion, depthwise kernel, output channels, repeats, first stride): Lite0's seven stages.
STAGES = [(1, 3, 16, 1, 1), (6, 3, 24, 2, 2), (6, 5, 40, 2, 2), (6, 3, 80, 3, 2), (6, 5, 112, 3, 1),
          (6, 5, 192, 4, 2), (6, 3, 320, 1, 1)]
TAPS = (4, 10, 14, 15)


class Weights:
    def __init__(self, path):
        self.f = open(path, "rb")
        n = struct.unpack("<Q", self.f.read(8))[0]
        self.header = json.loads(self.f.read(n))
        self.base = 8 + n

    def __getitem__(self, name):
        h = self.header[name]
        a, b = h["data_offsets"]
        self.f.seek(self.base + a)
        return np.frombuffer(self.f.read(b - a), np.float32).reshape(h["shape"])


class Graph:
    def __init__(self, weights):
        self.w, self.nodes, self.inits, self.n = weights, [], [], 0
        self.const("zero", np.array(0, np.float32))
        self.const("six", np.array(6, np.float32))

    def name(self, prefix):
        self.n += 1
        return f"{prefix}_{self.n}"

    def const(self, name, value):
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def conv_bn(self, x, conv, bn, k, stride, groups, relu6):
        """Conv + BatchNorm (epsilon 1e-3, folded) + ReLU6; TF "same" padding at stride 2."""
        scale = self.w[bn + ".weight"] / np.sqrt(self.w[bn + ".running_var"] + 1e-3)
        weight = (self.w[conv + ".weight"] * scale[:, None, None, None]).astype(np.float32)
        bias = (self.w[bn + ".bias"] - self.w[bn + ".running_mean"] * scale).astype(np.float32)
        before, after = ((k - 2) // 2, (k - 2) - (k - 2) // 2) if stride == 2 else (k // 2, k // 2)
        y = self.name("conv")
        inputs = [x, self.const(self.name("w"), weight), self.const(self.name("b"), bias)]
        self.nodes.append(helper.make_node("Conv", inputs, [y], kernel_shape=[k, k], strides=[stride, stride],
                                           pads=[before, before, after, after], group=groups))
        if not relu6:
            return y
        z = self.name("relu6")
        self.nodes.append(helper.make_node("Clip", [y, "zero", "six"], [z]))
        return z


def build(weights):
    g = Graph(weights)
    x = g.conv_bn("image", "_conv_stem", "_bn0", 3, 2, 1, True)
    cin, block, levels = 32, 0, []
    for expansion, k, c, repeats, first_stride in STAGES:
        for i in range(repeats):
            stride, b, skip = first_stride if i == 0 else 1, f"_blocks.{block}", x
            if expansion != 1:
                x = g.conv_bn(x, b + "._expand_conv", b + "._bn0", 1, 1, 1, True)
            x = g.conv_bn(x, b + "._depthwise_conv", b + "._bn1", k, stride, cin * expansion, True)
            x = g.conv_bn(x, b + "._project_conv", b + "._bn2", 1, 1, 1, False)
            if stride == 1 and cin == c:
                y = g.name("add")
                g.nodes.append(helper.make_node("Add", [x, skip], [y]))
                x = y
            if block in TAPS:
                levels.append(x)
            cin, block = c, block + 1
    levels.append(g.conv_bn(x, "_conv_head", "_bn1", 1, 1, 1, True))
    outputs = []
    for i, v in enumerate(levels):
        outputs.append(f"f{i + 1}")
        g.nodes.append(helper.make_node("Identity", [v], [outputs[-1]]))
    graph = helper.make_graph(
        g.nodes, "efficientnet_lite0_levels",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 256, 256])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], g.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True, help="EfficientNet-Lite0 ImageNet weights (safetensors)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    onnx.save(build(Weights(a.weights)), a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
