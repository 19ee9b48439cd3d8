//! Trained modules -> ONNX graphs (f32), BatchNorm folded into the preceding conv.
//!
//! Three graphs, as the detector runs them (see `crate::bundle`):
//! - teacher:   `image [1,3,H,W] -> f1, f2, f3`
//! - student_e: `image [1,3,H,W] -> f1, f2, f3` (Se)
//! - student_d: `in_f1, in_f2, in_f3 (Se's levels) -> f1, f2, f3` (DF embedding + Sd)
//!
//! and, for a bundle whose memory bank also scores the frame at half size, `teacher_half`:
//! `image [1,3,H,W] -> 2x2 average -> teacher -> f1, f2, f3` at half the teacher's grids.
//!
//! Folding: `y = γ (conv(x) + b − μ)/√(σ²+ε) + β` becomes a conv with weights scaled by
//! `γ/√(σ²+ε)` per output channel and bias `β + (b − μ)·γ/√(σ²+ε)`.

use burn::nn::BatchNorm;
use burn::prelude::*;

use super::nets::backbone::Backbone;
use super::nets::dense::DenseEncoder;
use super::nets::layers::{Act, ConvBn, ResBlock};
use super::nets::mobilenet_v2::{InvertedResidual, TapPoints};
use super::nets::resnet::ResNet;
use super::nets::students::{Decoder, DfEmbedding, Students};
use super::onnx::OnnxGraph;
use crate::preprocess::InputSpec;

/// Names of the level tensors every graph outputs.
pub const LEVELS: [&str; 3] = ["f1", "f2", "f3"];
/// Name of the image input.
pub const INPUT: &str = "image";

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().expect("f32 parameters")
}

/// Per-channel `(scale, shift)` of an inference-mode BatchNorm.
fn bn_affine(bn: &BatchNorm) -> (Vec<f32>, Vec<f32>) {
    let gamma = values(bn.gamma.val());
    let beta = values(bn.beta.val());
    let mean = values(bn.running_mean.value());
    let var = values(bn.running_var.value());
    let scale: Vec<f32> = gamma.iter().zip(&var).map(|(g, v)| g / (v + bn.epsilon as f32).sqrt()).collect();
    let shift = beta.iter().zip(&mean).zip(&scale).map(|((b, m), s)| b - m * s).collect();
    (scale, shift)
}

fn activation(g: &mut OnnxGraph, x: String, act: Act) -> String {
    match act {
        Act::None => x,
        Act::Relu => g.relu(x),
        Act::Relu6 => g.relu6(x),
    }
}

fn conv_bn(g: &mut OnnxGraph, x: String, l: &ConvBn) -> String {
    let dims: [usize; 4] = l.conv.weight.val().dims();
    let mut w = values(l.conv.weight.val());
    let (scale, shift) = bn_affine(&l.bn);
    let conv_bias = l.conv.bias.as_ref().map(|b| values(b.val())).unwrap_or_else(|| vec![0.0; dims[0]]);
    let per_out = w.len() / dims[0];
    for (oc, chunk) in w.chunks_mut(per_out).enumerate() {
        chunk.iter_mut().for_each(|v| *v *= scale[oc]);
    }
    let bias = (0..dims[0]).map(|oc| shift[oc] + conv_bias[oc] * scale[oc]).collect();
    let y = g.conv(x, w, dims, bias, l.conv.stride[0], l.conv.groups, l.pads());
    activation(g, y, l.act)
}

/// A stem and inverted residual blocks up to the last tap, tapped as [`TapPoints`] says (the
/// rule of [`forward_taps`](super::nets::mobilenet_v2::forward_taps)): MobileNetV2 and
/// EfficientNet-Lite.
fn inverted_residual_net(
    g: &mut OnnxGraph,
    x: String,
    stem: &ConvBn,
    blocks: &[InvertedResidual],
    taps: &TapPoints,
) -> Vec<String> {
    let mut x = conv_bn(g, x, stem);
    let mut out = Vec::new();
    for (i, block) in blocks.iter().enumerate().take(taps.last() + 1) {
        if taps.expanded && taps.contains(i) {
            out.push(conv_bn(g, x.clone(), &block.layers[0]));
            if i == taps.last() {
                break;
            }
        }
        let y = block.layers.iter().fold(x.clone(), |y, l| conv_bn(g, y, l));
        x = if block.residual { g.add(y, x) } else { y };
        if !taps.expanded && taps.contains(i) {
            out.push(x.clone());
        }
    }
    out
}

fn resnet(g: &mut OnnxGraph, x: String, net: &ResNet) -> Vec<String> {
    let stem = conv_bn(g, x, &net.stem);
    let mut x = g.max_pool(stem);
    let mut taps = Vec::new();
    for layer in &net.layers {
        x = layer.iter().fold(x, |x, b| res_block(g, x, b));
        taps.push(x.clone());
    }
    taps
}

fn dense(g: &mut OnnxGraph, x: String, net: &DenseEncoder) -> Vec<String> {
    let mut x = conv_bn(g, x, &net.stem);
    let mut taps = Vec::new();
    for (stage, head) in net.stages.iter().zip(&net.heads) {
        x = stage.iter().fold(x, |x, l| conv_bn(g, x, l));
        taps.push(conv_bn(g, x.clone(), head));
    }
    taps
}

fn res_block(g: &mut OnnxGraph, x: String, b: &ResBlock) -> String {
    let skip = match &b.shortcut {
        Some(s) => conv_bn(g, x.clone(), s),
        None => x.clone(),
    };
    let y = conv_bn(g, x, &b.a);
    let y = conv_bn(g, y, &b.b);
    let sum = g.add(y, skip);
    g.relu(sum)
}

fn df_embedding(g: &mut OnnxGraph, levels: &[String], df: &DfEmbedding) -> String {
    let aligned =
        levels.iter().zip(&df.down).map(|(x, steps)| steps.iter().fold(x.clone(), |x, s| conv_bn(g, x, s))).collect();
    let cat = g.concat(aligned, 1);
    df.fuse.iter().fold(cat, |x, b| res_block(g, x, b))
}

fn decoder(g: &mut OnnxGraph, bottleneck: String, sd: &Decoder) -> Vec<String> {
    let mut x = bottleneck;
    let mut outs = Vec::new();
    for b in &sd.blocks {
        // ConvTranspose weight is [cin, cout, k, k]: the BN scales axis 1.
        let dims: [usize; 4] = b.up.weight.val().dims();
        let mut w = values(b.up.weight.val());
        let (scale, shift) = bn_affine(&b.up_bn);
        let k2 = dims[2] * dims[3];
        for (i, v) in w.iter_mut().enumerate() {
            *v *= scale[(i / k2) % dims[1]];
        }
        let up_bias = b.up.bias.as_ref().map(|b| values(b.val())).unwrap_or_else(|| vec![0.0; dims[1]]);
        let bias = (0..dims[1]).map(|c| shift[c] + up_bias[c] * scale[c]).collect();
        let up = g.conv_transpose(x, w, dims, bias);
        let up = g.relu(up);
        let h = conv_bn(g, up, &b.refine);
        let hd: [usize; 4] = b.head.weight.val().dims();
        let head_bias = b.head.bias.as_ref().map(|b| values(b.val())).unwrap_or_else(|| vec![0.0; hd[0]]);
        outs.push(g.conv(h.clone(), values(b.head.weight.val()), hd, head_bias, 1, 1, [0; 4]));
        x = h;
    }
    outs.reverse();
    outs
}

fn level_shapes(spec: &InputSpec, channels: &[usize], strides: &[usize]) -> Vec<Vec<usize>> {
    channels.iter().zip(strides).map(|(&c, &s)| vec![1, c, spec.height as usize / s, spec.width as usize / s]).collect()
}

/// Names the graph's level outputs `f1..f3` with their shapes.
fn set_outputs(g: &mut OnnxGraph, outs: Vec<String>, shapes: &[Vec<usize>]) {
    for ((out, name), shape) in outs.iter().zip(LEVELS).zip(shapes) {
        g.rename(out, name);
        g.outputs.push((name.to_string(), shape.clone()));
    }
}

/// A graph `image -> f1..f3` for a backbone (the teacher or Se).
pub fn backbone_graph(
    name: &str,
    net: &Backbone,
    spec: &InputSpec,
    channels: &[usize],
    strides: &[usize],
) -> OnnxGraph {
    scaled_backbone_graph(name, net, spec, channels, strides, 1)
}

/// [`backbone_graph`] on the image averaged down by `scale` (1 or 2) inside the graph, so the
/// daemon feeds every graph the same input tensor; its levels are `scale` times coarser.
pub fn scaled_backbone_graph(
    name: &str,
    net: &Backbone,
    spec: &InputSpec,
    channels: &[usize],
    strides: &[usize],
    scale: usize,
) -> OnnxGraph {
    let mut g = OnnxGraph::new(name);
    g.inputs.push((INPUT.into(), vec![1, 3, spec.height as usize, spec.width as usize]));
    let x = if scale == 2 { g.halve(INPUT.to_string()) } else { INPUT.to_string() };
    let taps = if let Some(m) = &net.mobilenet_v2 {
        inverted_residual_net(&mut g, x, &m.stem, &m.blocks, &m.taps)
    } else if let Some(e) = &net.efficientnet_lite {
        inverted_residual_net(&mut g, x, &e.stem, &e.blocks, &e.taps)
    } else if let Some(r) = &net.resnet {
        resnet(&mut g, x, r)
    } else if let Some(d) = &net.dense {
        dense(&mut g, x, d)
    } else {
        unreachable!("a backbone has one architecture")
    };
    let scaled: Vec<usize> = strides.iter().map(|s| s * scale).collect();
    set_outputs(&mut g, taps, &level_shapes(spec, channels, &scaled));
    g
}

/// The DF embedding + Sd graph `in_f1..in_f3 -> f1..f3`; `None` for the S-T baseline.
pub fn student_d_graph(s: &Students, spec: &InputSpec, channels: &[usize], strides: &[usize]) -> Option<OnnxGraph> {
    let (df, sd) = (s.df.as_ref()?, s.sd.as_ref()?);
    let mut g = OnnxGraph::new("student_d");
    let shapes = level_shapes(spec, channels, strides);
    let inputs: Vec<String> = LEVELS.iter().map(|l| format!("in_{l}")).collect();
    for (name, shape) in inputs.iter().zip(&shapes) {
        g.inputs.push((name.clone(), shape.clone()));
    }
    let bottleneck = df_embedding(&mut g, &inputs, df);
    let outs = decoder(&mut g, bottleneck, sd);
    set_outputs(&mut g, outs, &shapes);
    Some(g)
}
