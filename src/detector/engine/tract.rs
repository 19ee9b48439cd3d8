//! The tract engine: ONNX files optimised into runnable plans, pure Rust, in the binary.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tract_onnx::prelude::*;

use super::{GraphRunner, Output};
use crate::detector::DetectorError;

pub type Plan = Arc<TypedRunnableModel>;

/// How tract lays out the convolutions' activations inside a plan (`[detector] tract_layout`,
/// `dskd bench --channels-last`, `dskd verify --channels-last`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// As the ONNX files have them (NCHW): the default.
    #[default]
    ChannelsFirst,
    /// Rewritten to NHWC by tract's `conv_nhwc` transform. A lever for ARM boards: on x86
    /// tract 0.23.9 vectorises depthwise convolutions only in the channels-first layout, so it
    /// bought nothing there (docs/PERFORMANCE.md); aarch64 is where tract has a channel-last
    /// depthwise kernel, the one that handles stride 2.
    ChannelsLast,
}

impl Layout {
    /// The layout a `--channels-last` flag asks for.
    pub fn from_channels_last(channels_last: bool) -> Self {
        if channels_last { Layout::ChannelsLast } else { Layout::ChannelsFirst }
    }

    /// As config files and reports spell it.
    pub fn name(self) -> &'static str {
        match self {
            Layout::ChannelsFirst => "channels-first",
            Layout::ChannelsLast => "channels-last",
        }
    }
}

/// One graph as a tract plan, with its pinned input shapes.
pub struct TractGraph {
    plan: Plan,
    shapes: Vec<Vec<usize>>,
}

impl TractGraph {
    /// Loads an ONNX file into a runnable plan with the given input shapes pinned.
    pub fn load(path: &Path, inputs: &[Vec<usize>], layout: Layout) -> Result<Self, DetectorError> {
        let plan = load_plan(path, inputs, layout).map_err(|e| load_error(path, e))?;
        Ok(Self { plan, shapes: inputs.to_vec() })
    }
}

fn load_error(path: &Path, e: TractError) -> DetectorError {
    DetectorError::Load { path: path.to_owned(), message: format!("{e:#}") }
}

fn load_plan(path: &Path, inputs: &[Vec<usize>], layout: Layout) -> TractResult<Plan> {
    let mut model = tract_onnx::onnx().model_for_path(path)?;
    for (i, shape) in inputs.iter().enumerate() {
        model = model.with_input_fact(i, f32::fact(shape).into())?;
    }
    let mut model = model.into_typed()?;
    // The rewrite runs on a decluttered graph; the default path leaves decluttering to
    // `into_optimized` (which does it anyway), so loading costs what it did.
    if layout == Layout::ChannelsLast {
        model = model.into_decluttered()?;
        let t = tract_onnx::tract_core::transform::get_transform("conv_nhwc")?
            .ok_or_else(|| TractError::msg("this tract has no `conv_nhwc` transform"))?;
        t.transform(&mut model)?;
    }
    model.into_optimized()?.into_runnable()
}

impl GraphRunner for TractGraph {
    fn run(&self, inputs: &[&[f32]]) -> Result<Vec<Output>, String> {
        let run = || -> TractResult<Vec<Output>> {
            let values: TVec<TValue> = inputs
                .iter()
                .zip(&self.shapes)
                .map(|(data, shape)| Tensor::from_shape(shape, data).map(|t| t.into_tvalue()))
                .collect::<TractResult<_>>()?;
            let outputs = self.plan.run(values)?;
            outputs
                .iter()
                .map(|t| {
                    let data = t.to_plain_array_view::<f32>()?.iter().copied().collect();
                    Ok(Output { shape: t.shape().to_vec(), data })
                })
                .collect()
        };
        run().map_err(|e| format!("{e:#}"))
    }

    fn tract_plan(&self) -> Option<&Plan> {
        Some(&self.plan)
    }
}

/// An ONNX graph with chosen tensors as outputs, for looking inside it. The trainer uses it
/// to collect activation statistics for int8 calibration.
pub struct Probe {
    path: PathBuf,
    graph: TractGraph,
}

impl Probe {
    /// Loads `path` with the given input shapes and `outputs` (tensor names) as its outputs.
    pub fn new(path: &Path, shapes: &[Vec<usize>], outputs: &[String]) -> Result<Self, DetectorError> {
        let load = || -> TractResult<Plan> {
            let mut model = tract_onnx::onnx().model_for_path(path)?;
            for (i, shape) in shapes.iter().enumerate() {
                model = model.with_input_fact(i, f32::fact(shape).into())?;
            }
            model.select_outputs_by_name(outputs)?;
            model.into_optimized()?.into_runnable()
        };
        let plan = load().map_err(|e| load_error(path, e))?;
        Ok(Self { path: path.to_owned(), graph: TractGraph { plan, shapes: shapes.to_vec() } })
    }

    /// Runs once; returns every selected output flattened.
    pub fn run(&self, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>, DetectorError> {
        let outputs = self
            .graph
            .run(inputs)
            .map_err(|message| DetectorError::Run { graph: self.path.display().to_string(), message })?;
        Ok(outputs.into_iter().map(|o| o.data).collect())
    }
}
