//! f32 graph -> int8 QDQ graph, from activation statistics of training images.
//!
//! Every Conv / ConvTranspose but the depthwise ones gets:
//! - its weights stored as int8, symmetric, one scale per output-or-input channel (axis 0),
//!   behind a `DequantizeLinear` (4x smaller files);
//! - its input activation passed through `QuantizeLinear -> DequantizeLinear` with a uint8
//!   per-tensor scale and zero point from the min/max the calibration images reached.
//!
//! This is the QDQ form: runtimes with integer kernels fuse the pairs into int8 convs
//! (onnxruntime: the students 1.6-2x faster than f32 on this project's AVX-512 VNNI box); tract
//! 0.23 executes it dequantized (slower than f32). tract's integer kernels are reached only
//! through `ConvInteger` / `QLinearConv`; that form was measured and did not pay either
//! (docs/PERFORMANCE.md, "int8"). The trainer quantizes the students only: the teacher stays f32.

use std::collections::HashMap;

use super::onnx::{Attr, Data, Node, OnnxGraph};

/// Convolutions that get quantized. Depthwise convs stay f32: measured on the demo bundle,
/// quantizing the pretrained teacher's depthwise weights (9 values per channel) moved its
/// map by 24% of the peak against 16% without them, and they hold few of the parameters.
fn is_quantized(n: &Node) -> bool {
    (n.op == "Conv" || n.op == "ConvTranspose") && !is_depthwise(n)
}

fn is_depthwise(n: &Node) -> bool {
    n.attrs.iter().any(|(k, v)| *k == "group" && matches!(v, Attr::Int(g) if *g > 1))
}

/// Activation tensors that feed a convolution, in graph order, without repeats.
pub fn conv_inputs(g: &OnnxGraph) -> Vec<String> {
    let mut seen = Vec::new();
    for n in g.nodes.iter().filter(|n| is_quantized(n)) {
        if !seen.contains(&n.inputs[0]) {
            seen.push(n.inputs[0].clone());
        }
    }
    seen
}

/// uint8 affine parameters covering `[min, max]` (always including 0).
pub fn activation_params(min: f32, max: f32) -> (f32, u8) {
    let (lo, hi) = (min.min(0.0), max.max(0.0));
    let scale = ((hi - lo) / 255.0).max(1e-8);
    let zp = (-lo / scale).round().clamp(0.0, 255.0) as u8;
    (scale, zp)
}

/// Symmetric per-channel int8 weights along axis 0: (values, scales).
pub fn quantize_weights(w: &[f32], channels: usize) -> (Vec<i8>, Vec<f32>) {
    let per = w.len() / channels;
    let mut q = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(channels);
    for chunk in w.chunks(per) {
        let max = chunk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let s = (max / 127.0).max(1e-12);
        scales.push(s);
        q.extend(chunk.iter().map(|v| (v / s).round().clamp(-127.0, 127.0) as i8));
    }
    (q, scales)
}

/// The QDQ version of `g`; `ranges` maps every tensor of [`conv_inputs`] to its (min, max).
pub fn qdq(g: &OnnxGraph, ranges: &HashMap<String, (f32, f32)>) -> OnnxGraph {
    let mut out = g.clone();
    out.name = format!("{}_int8", g.name);
    out.nodes.clear();
    let mut dequantized: HashMap<String, String> = HashMap::new();
    let mut dropped = Vec::new();
    for node in &g.nodes {
        let mut node = node.clone();
        if is_quantized(&node) {
            let x = node.inputs[0].clone();
            if !dequantized.contains_key(&x) {
                let (lo, hi) = ranges.get(&x).copied().unwrap_or((0.0, 0.0));
                let (scale, zp) = activation_params(lo, hi);
                let s = out.add_initializer("x_scale", vec![], Data::F32(vec![scale]));
                let z = out.add_initializer("x_zero", vec![], Data::U8(vec![zp]));
                let q = out.add_node("QuantizeLinear", vec![x.clone(), s.clone(), z.clone()], vec![]);
                let dq = out.add_node("DequantizeLinear", vec![q, s, z], vec![]);
                dequantized.insert(x.clone(), dq);
            }
            node.inputs[0] = dequantized[&x].clone();
            let w = g.initializer(&node.inputs[1]).expect("conv weights are initializers").clone();
            let Data::F32(values) = &w.data else { unreachable!("f32 graph") };
            let (q, scales) = quantize_weights(values, w.dims[0]);
            let channels = w.dims[0];
            let wq = out.add_initializer("w_q", w.dims.clone(), Data::I8(q));
            let ws = out.add_initializer("w_scale", vec![channels], Data::F32(scales));
            let wz = out.add_initializer("w_zero", vec![channels], Data::I8(vec![0; channels]));
            node.inputs[1] = out.add_node("DequantizeLinear", vec![wq, ws, wz], vec![("axis", Attr::Int(0))]);
            dropped.push(w.name);
        }
        out.nodes.push(node);
    }
    out.initializers.retain(|i| !dropped.contains(&i.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_round_trip_within_half_a_step() {
        let w = [0.5, -1.0, 0.25, 0.0, 2.0, -0.1];
        let (q, s) = quantize_weights(&w, 2);
        for (i, v) in w.iter().enumerate() {
            let back = q[i] as f32 * s[i / 3];
            assert!((back - v).abs() <= s[i / 3] / 2.0 + 1e-7, "{v} -> {back}");
        }
    }

    #[test]
    fn activation_range_maps_zero_exactly() {
        let (scale, zp) = activation_params(-1.0, 3.0);
        assert!((scale - 4.0 / 255.0).abs() < 1e-7);
        assert_eq!(zp, 64);
        assert_eq!(activation_params(0.5, 6.0).1, 0, "a ReLU output range starts at 0");
    }
}
