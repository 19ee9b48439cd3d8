//! A small ONNX graph IR and its writer (our own, over tract-onnx's prost types).
//!
//! The exporter builds an [`OnnxGraph`] from the trained modules; [`super::quantize`] rewrites
//! it with int8 QDQ pairs; [`OnnxGraph::write`] encodes it as an opset-13 `ModelProto`.
//! Every node is named after its single output tensor, so tract can select any tensor as an
//! output by name (the int8 calibration probes activations this way).

use std::path::Path;

use prost::Message;
use tract_onnx::pb;

/// Initializer payloads.
#[derive(Debug, Clone)]
pub enum Data {
    F32(Vec<f32>),
    I8(Vec<i8>),
    U8(Vec<u8>),
}

#[derive(Debug, Clone)]
pub struct Initializer {
    pub name: String,
    pub dims: Vec<usize>,
    pub data: Data,
}

#[derive(Debug, Clone)]
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
}

#[derive(Debug, Clone)]
pub struct Node {
    pub op: &'static str,
    pub inputs: Vec<String>,
    pub output: String,
    pub attrs: Vec<(&'static str, Attr)>,
}

/// A graph with f32 inputs and outputs of fixed shapes.
#[derive(Debug, Clone, Default)]
pub struct OnnxGraph {
    pub name: String,
    pub inputs: Vec<(String, Vec<usize>)>,
    pub outputs: Vec<(String, Vec<usize>)>,
    pub nodes: Vec<Node>,
    pub initializers: Vec<Initializer>,
    counter: usize,
}

impl OnnxGraph {
    pub fn new(name: &str) -> Self {
        Self { name: name.into(), ..Default::default() }
    }

    /// A fresh tensor name with a readable prefix.
    pub fn fresh(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}_{}", self.counter)
    }

    pub fn add_initializer(&mut self, prefix: &str, dims: Vec<usize>, data: Data) -> String {
        let name = self.fresh(prefix);
        self.initializers.push(Initializer { name: name.clone(), dims, data });
        name
    }

    pub fn add_node(&mut self, op: &'static str, inputs: Vec<String>, attrs: Vec<(&'static str, Attr)>) -> String {
        let output = self.fresh(&op.to_ascii_lowercase());
        self.nodes.push(Node { op, inputs, output: output.clone(), attrs });
        output
    }

    pub fn initializer(&self, name: &str) -> Option<&Initializer> {
        self.initializers.iter().find(|i| i.name == name)
    }

    /// A convolution `[cout, cin/groups, k, k]` with bias and (top, left, bottom, right) padding.
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        &mut self,
        x: String,
        w: Vec<f32>,
        dims: [usize; 4],
        bias: Vec<f32>,
        stride: usize,
        groups: usize,
        pads: [usize; 4],
    ) -> String {
        let k = dims[2] as i64;
        let w = self.add_initializer("w", dims.to_vec(), Data::F32(w));
        let b = self.add_initializer("b", vec![dims[0]], Data::F32(bias));
        self.add_node(
            "Conv",
            vec![x, w, b],
            vec![
                ("kernel_shape", Attr::Ints(vec![k, k])),
                ("strides", Attr::Ints(vec![stride as i64; 2])),
                ("pads", Attr::Ints(pads.iter().map(|&p| p as i64).collect())),
                ("group", Attr::Int(groups as i64)),
                ("dilations", Attr::Ints(vec![1, 1])),
            ],
        )
    }

    /// A transposed convolution `[cin, cout, k, k]`, stride = k, no padding (exact x k upsample).
    pub fn conv_transpose(&mut self, x: String, w: Vec<f32>, dims: [usize; 4], bias: Vec<f32>) -> String {
        let k = dims[2] as i64;
        let w = self.add_initializer("w", dims.to_vec(), Data::F32(w));
        let b = self.add_initializer("b", vec![dims[1]], Data::F32(bias));
        self.add_node(
            "ConvTranspose",
            vec![x, w, b],
            vec![("kernel_shape", Attr::Ints(vec![k, k])), ("strides", Attr::Ints(vec![k, k]))],
        )
    }

    /// 3x3 stride-2 max-pool with padding 1 (the ResNet stem).
    pub fn max_pool(&mut self, x: String) -> String {
        self.add_node(
            "MaxPool",
            vec![x],
            vec![
                ("kernel_shape", Attr::Ints(vec![3, 3])),
                ("strides", Attr::Ints(vec![2, 2])),
                ("pads", Attr::Ints(vec![1; 4])),
            ],
        )
    }

    /// 2x2 average, stride 2: the image at half size (the half-scale teacher's input).
    pub fn halve(&mut self, x: String) -> String {
        self.add_node(
            "AveragePool",
            vec![x],
            vec![("kernel_shape", Attr::Ints(vec![2, 2])), ("strides", Attr::Ints(vec![2, 2]))],
        )
    }

    pub fn relu(&mut self, x: String) -> String {
        self.add_node("Relu", vec![x], vec![])
    }

    /// ReLU6 as `Clip(x, 0, 6)` (opset 11+ takes the bounds as inputs).
    pub fn relu6(&mut self, x: String) -> String {
        let lo = self.add_initializer("zero", vec![], Data::F32(vec![0.0]));
        let hi = self.add_initializer("six", vec![], Data::F32(vec![6.0]));
        self.add_node("Clip", vec![x, lo, hi], vec![])
    }

    pub fn add(&mut self, a: String, b: String) -> String {
        self.add_node("Add", vec![a, b], vec![])
    }

    pub fn concat(&mut self, xs: Vec<String>, axis: i64) -> String {
        self.add_node("Concat", xs, vec![("axis", Attr::Int(axis))])
    }

    /// Renames the tensor `from` to `to` everywhere (used to give outputs stable names).
    pub fn rename(&mut self, from: &str, to: &str) {
        for n in &mut self.nodes {
            if n.output == from {
                n.output = to.into();
            }
            for i in &mut n.inputs {
                if i == from {
                    *i = to.into();
                }
            }
        }
    }

    /// Encodes the graph as an ONNX model (IR 8, opset 13).
    pub fn to_proto(&self) -> pb::ModelProto {
        let nodes = self.nodes.iter().map(node_proto).collect();
        let graph = pb::GraphProto {
            name: self.name.clone(),
            node: nodes,
            initializer: self.initializers.iter().map(tensor_proto).collect(),
            input: self.inputs.iter().map(|(n, s)| value_info(n, s)).collect(),
            output: self.outputs.iter().map(|(n, s)| value_info(n, s)).collect(),
            ..Default::default()
        };
        pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 13 }],
            producer_name: "dskd-train".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(graph),
            ..Default::default()
        }
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.to_proto().encode_to_vec())
    }
}

fn node_proto(n: &Node) -> pb::NodeProto {
    let attribute = n
        .attrs
        .iter()
        .map(|(name, a)| match a {
            Attr::Int(i) => pb::AttributeProto {
                name: (*name).into(),
                r#type: pb::attribute_proto::AttributeType::Int as i32,
                i: *i,
                ..Default::default()
            },
            Attr::Ints(v) => pb::AttributeProto {
                name: (*name).into(),
                r#type: pb::attribute_proto::AttributeType::Ints as i32,
                ints: v.clone(),
                ..Default::default()
            },
        })
        .collect();
    pb::NodeProto {
        input: n.inputs.clone(),
        output: vec![n.output.clone()],
        name: n.output.clone(),
        op_type: n.op.into(),
        attribute,
        ..Default::default()
    }
}

fn tensor_proto(i: &Initializer) -> pb::TensorProto {
    use pb::tensor_proto::DataType;
    let (data_type, raw_data) = match &i.data {
        Data::F32(v) => (DataType::Float, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Data::I8(v) => (DataType::Int8, v.iter().map(|x| *x as u8).collect()),
        Data::U8(v) => (DataType::Uint8, v.clone()),
    };
    pb::TensorProto {
        dims: i.dims.iter().map(|d| *d as i64).collect(),
        data_type: data_type as i32,
        name: i.name.clone(),
        raw_data,
        ..Default::default()
    }
}

fn value_info(name: &str, shape: &[usize]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    let dim =
        shape.iter().map(|d| Dimension { value: Some(Value::DimValue(*d as i64)), ..Default::default() }).collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}
