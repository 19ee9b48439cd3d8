//! The inference engines that run a bundle's graphs: one interface ([`GraphRunner`]) and one
//! place that chooses ([`load_graph`]).
//!
//! - **tract** (the default): pure Rust, inside the binary; runs everywhere dskd builds.
//! - **onnxruntime** (cargo feature `onnxruntime`): Microsoft's runtime, loaded at start from its
//!   shared library (`libonnxruntime.so`, e.g. the one inside the PyPI `onnxruntime` wheel), for
//!   boxes that need its speed. Nothing of it is linked in; without the library the detector
//!   does not load and says where it looked.
//!
//! Everything around the graphs (preprocessing, maps, memory bank, verdict) is the detector's
//! and the same for both.

use std::path::{Path, PathBuf};

use super::DetectorError;

#[cfg(feature = "onnxruntime")]
pub mod onnxruntime;
pub mod tract;

pub use tract::Layout;

/// Which engine runs the graphs, with its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Engine {
    Tract {
        /// How tract lays out the convolutions' activations.
        layout: Layout,
    },
    Onnxruntime {
        /// `libonnxruntime.so` to load; `None`: `$ORT_DYLIB_PATH`, then beside the binary and
        /// in the package's library folder (see [`onnxruntime_library`]).
        library: Option<PathBuf>,
    },
}

impl Default for Engine {
    fn default() -> Self {
        Engine::Tract { layout: Layout::default() }
    }
}

impl Engine {
    /// Every engine's name, as the command line takes them.
    pub const NAMES: [&'static str; 2] = ["tract", "onnxruntime"];

    /// `tract` or `onnxruntime`, as in config files, reports and JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Engine::Tract { .. } => "tract",
            Engine::Onnxruntime { .. } => "onnxruntime",
        }
    }

    /// This engine with tract's plans laid out as `layout` (other engines have no layout).
    pub fn with_tract_layout(self, layout: Layout) -> Self {
        match self {
            Engine::Tract { .. } => Engine::Tract { layout },
            other => other,
        }
    }

    /// The name with the settings that change how it runs: `tract (channels-last)`.
    pub fn describe(&self) -> String {
        match self {
            Engine::Tract { layout: Layout::ChannelsLast } => format!("tract ({})", Layout::ChannelsLast.name()),
            _ => self.name().to_owned(),
        }
    }

    /// The engine called `name`, with default settings.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "tract" => Some(Self::default()),
            "onnxruntime" => Some(Engine::Onnxruntime { library: None }),
            _ => None,
        }
    }
}

/// One output of a graph run: its shape and values (row-major).
#[derive(Debug, Clone)]
pub struct Output {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A loaded graph with pinned input shapes: f32 tensors in, its outputs out, in order.
pub trait GraphRunner: Send + Sync {
    /// Runs once; `inputs` in the graph's input order, each of its pinned shape. Errors are
    /// the engine's own words.
    fn run(&self, inputs: &[&[f32]]) -> Result<Vec<Output>, String>;

    /// The tract plan behind this graph (per-operator profiling is tract's); `None` for
    /// other engines.
    fn tract_plan(&self) -> Option<&tract::Plan> {
        None
    }
}

/// Loads the ONNX file at `path` on `engine` with the given input shapes pinned: the one place
/// that chooses an engine.
pub fn load_graph(engine: &Engine, path: &Path, inputs: &[Vec<usize>]) -> Result<Box<dyn GraphRunner>, DetectorError> {
    match engine {
        Engine::Tract { layout } => Ok(Box::new(tract::TractGraph::load(path, inputs, *layout)?)),
        #[cfg(feature = "onnxruntime")]
        Engine::Onnxruntime { library } => Ok(Box::new(onnxruntime::OrtGraph::load(library.as_deref(), path, inputs)?)),
        #[cfg(not(feature = "onnxruntime"))]
        Engine::Onnxruntime { .. } => Err(DetectorError::EngineMissing { engine: "onnxruntime" }),
    }
}

/// The `libonnxruntime.so` the onnxruntime engine loads when none is configured: the first of
/// `$ORT_DYLIB_PATH`, `lib/` beside the binary, the binary's folder, and the package's
/// `/usr/lib/dskd/` that exists; every place looked when none does.
pub fn onnxruntime_library(configured: Option<&Path>) -> Result<PathBuf, Vec<PathBuf>> {
    if let Some(p) = configured {
        return Ok(p.to_owned());
    }
    let mut looked = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        looked.push(PathBuf::from(p));
    }
    let file = "libonnxruntime.so";
    if let Some(bin) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_owned)) {
        looked.push(bin.join("lib").join(file));
        looked.push(bin.join(file));
    }
    looked.push(PathBuf::from("/usr/lib/dskd").join(file));
    looked.iter().find(|p| p.is_file()).cloned().ok_or(looked)
}
