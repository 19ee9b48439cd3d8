//! Where a graph's time goes, for `dskd bench --profile`: its multiply-adds (tract's own cost
//! model over the decluttered graph) and wall time per operator kind (a run with a timing hook
//! around every node).

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::Cost;

use super::engine::tract::Plan;
use super::{Detector, DetectorError, Graph};

/// Time spent in one kind of operator during one run of a graph.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OpTime {
    pub op: String,
    /// Milliseconds per run, summed over the nodes of this kind.
    pub ms: f64,
    /// Nodes of this kind in the graph.
    pub nodes: usize,
}

/// One graph's cost and per-operator times.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GraphProfile {
    /// `teacher`, `student_e` or `student_d`.
    pub graph: &'static str,
    pub multiply_adds: u64,
    /// Heaviest first.
    pub ops: Vec<OpTime>,
}

fn load_error(path: &Path) -> impl Fn(TractError) -> DetectorError + '_ {
    move |e| DetectorError::Load { path: path.to_owned(), message: format!("{e:#}") }
}

/// Multiply-adds of one run of the graph at the given input shapes.
pub fn multiply_adds(path: &Path, inputs: &[Vec<usize>]) -> Result<u64, DetectorError> {
    let err = load_error(path);
    let mut model = tract_onnx::onnx().model_for_path(path).map_err(&err)?;
    for (i, shape) in inputs.iter().enumerate() {
        model = model.with_input_fact(i, f32::fact(shape).into()).map_err(&err)?;
    }
    let model = model.into_typed().map_err(&err)?.into_decluttered().map_err(&err)?;
    let mut total = 0u64;
    for node in model.nodes() {
        let facts = model.node_input_facts(node.id).map_err(&err)?;
        for (cost, count) in node.op.cost(&facts).map_err(&err)? {
            if matches!(cost, Cost::FMA(_)) {
                let n = count.to_i64().map_err(|e| err(e.into()))?;
                total += n.max(0) as u64;
            }
        }
    }
    Ok(total)
}

/// Runs `g` `runs` times with a timer around every node; mean ms per run per operator kind.
fn op_times(g: &Graph, plan: &Plan, inputs: &TVec<TValue>, runs: usize) -> Result<Vec<OpTime>, DetectorError> {
    let err = |e: TractError| g.error(format!("{e:#}"));
    let mut times: HashMap<String, f64> = HashMap::new();
    for _ in 0..runs {
        let mut state = plan.spawn().map_err(err)?;
        state
            .run_plan_with_eval(inputs.clone(), |ctx, op_state, node, input| {
                let start = Instant::now();
                let out = tract_onnx::tract_core::plan::eval(ctx, op_state, node, input);
                *times.entry(node.op.name().to_string()).or_default() += start.elapsed().as_secs_f64() * 1e3;
                out
            })
            .map_err(err)?;
    }
    let mut nodes: HashMap<String, usize> = HashMap::new();
    for node in plan.model().nodes() {
        *nodes.entry(node.op.name().to_string()).or_default() += 1;
    }
    let mut ops: Vec<OpTime> = times
        .into_iter()
        .map(|(op, ms)| OpTime { nodes: nodes.get(&op).copied().unwrap_or(0), op, ms: ms / runs as f64 })
        .collect();
    ops.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    Ok(ops)
}

impl Detector {
    /// Multiply-adds and per-operator times of every graph, on one preprocessed input.
    pub fn profile(&self, input: &[f32], runs: usize) -> Result<Vec<GraphProfile>, DetectorError> {
        let mut out = Vec::new();
        let mut one = |name: &'static str, g: &Graph, inputs: Vec<&[f32]>| -> Result<(), DetectorError> {
            let plan = g.runner.tract_plan().ok_or(DetectorError::NotTract { engine: self.engine() })?;
            let values = inputs
                .iter()
                .zip(&g.inputs)
                .map(|(data, shape)| Tensor::from_shape(shape, data).map(|t| t.into_tvalue()))
                .collect::<TractResult<TVec<TValue>>>()
                .map_err(|e| g.error(format!("{e:#}")))?;
            out.push(GraphProfile {
                graph: name,
                multiply_adds: multiply_adds(&g.path, &g.inputs)?,
                ops: op_times(g, plan, &values, runs.max(1))?,
            });
            Ok(())
        };
        one("teacher", &self.teacher, vec![input])?;
        one("student_e", &self.student_e, vec![input])?;
        if let Some(sd) = &self.student_d {
            let se_out = self.student_e.run(&[input])?;
            one("student_d", sd, se_out.iter().map(|o| o.data.as_slice()).collect())?;
        }
        Ok(out)
    }
}
