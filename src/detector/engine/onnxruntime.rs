//! The onnxruntime engine: each graph an onnxruntime session, the runtime loaded once per
//! process from its shared library (ort's `load-dynamic`: nothing linked, nothing downloaded).
//!
//! Threads as with tract: one intra-op thread per session, the teacher on its own thread
//! beside Se -> Sd (the detector's), so both cores work in latency mode and a frame per core
//! in throughput mode. A session runs one call at a time (`&mut` in ort), hence the mutex;
//! the detector never runs one graph from two threads at once except in throughput mode,
//! where workers then take turns per graph.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use super::{GraphRunner, Output, onnxruntime_library};
use crate::detector::DetectorError;

/// The process's onnxruntime once loaded, and the library it came from. A failed load is not
/// kept: a corrected path (at reload) is tried afresh.
static RUNTIME: Mutex<Option<(PathBuf, &'static Environment)>> = Mutex::new(None);

/// Loads the library once; a later request for another file is refused (one runtime per
/// process, as onnxruntime allows).
fn environment(configured: Option<&Path>) -> Result<&'static Environment, DetectorError> {
    let wanted = onnxruntime_library(configured).map_err(|looked| DetectorError::EngineLibrary {
        message: format!(
            "no libonnxruntime.so found (looked in: {}); set [detector] onnxruntime_library or ORT_DYLIB_PATH",
            looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
    })?;
    let mut runtime = RUNTIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    match &*runtime {
        Some((path, env)) if *path == wanted => Ok(env),
        Some((path, _)) => Err(DetectorError::EngineLibrary {
            message: format!(
                "onnxruntime is already loaded from {} in this process; {} cannot be loaded beside it",
                path.display(),
                wanted.display()
            ),
        }),
        None => {
            let load = || -> Result<Environment, String> {
                ort::init_from(&wanted).map_err(|e| e.to_string())?.build().map_err(|e| e.to_string())
            };
            let env = load().map_err(|message| DetectorError::EngineLibrary {
                message: format!("cannot load {}: {message}", wanted.display()),
            })?;
            // Lives as long as the process, as the runtime it holds does.
            let env: &'static Environment = Box::leak(Box::new(env));
            *runtime = Some((wanted, env));
            Ok(env)
        }
    }
}

/// One graph as an onnxruntime session, with its pinned input shapes.
pub struct OrtGraph {
    session: Mutex<Session>,
    shapes: Vec<Vec<usize>>,
}

impl OrtGraph {
    /// Loads the ONNX file at `path` (library: `configured`, else found as
    /// [`onnxruntime_library`] says).
    pub fn load(configured: Option<&Path>, path: &Path, inputs: &[Vec<usize>]) -> Result<Self, DetectorError> {
        let env = environment(configured)?;
        let err = |e: ort::Error| DetectorError::Load { path: path.to_owned(), message: e.to_string() };
        let session = Session::builder(env)
            .map_err(err)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| err(e.into()))?
            .with_intra_threads(1)
            .map_err(|e| err(e.into()))?
            .commit_from_file(path)
            .map_err(err)?;
        Ok(Self { session: Mutex::new(session), shapes: inputs.to_vec() })
    }
}

impl GraphRunner for OrtGraph {
    fn run(&self, inputs: &[&[f32]]) -> Result<Vec<Output>, String> {
        let values = inputs
            .iter()
            .zip(&self.shapes)
            .map(|(data, shape)| TensorRef::from_array_view((shape.clone(), *data)).map(|t| t.into()))
            .collect::<Result<Vec<ort::session::SessionInputValue>, _>>()
            .map_err(|e| e.to_string())?;
        let mut session = self.session.lock().map_err(|_| "a previous run panicked".to_string())?;
        let outputs = session.run(values.as_slice()).map_err(|e| e.to_string())?;
        outputs
            .iter()
            .map(|(_, v)| {
                let (shape, data) = v.try_extract_tensor::<f32>().map_err(|e| e.to_string())?;
                Ok(Output { shape: shape.iter().map(|&d| d as usize).collect(), data: data.to_vec() })
            })
            .collect()
    }
}
