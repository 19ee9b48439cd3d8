//! Named f32 tensors in a safetensors file: how the memory bank and the image Gaussian are
//! stored in a bundle. Errors are messages; each caller names the file and its own error type.

use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

/// Writes `(name, shape, values)` tensors, little-endian f32.
pub fn write(path: &Path, tensors: &[(&str, Vec<usize>, &[f32])]) -> Result<(), String> {
    let bytes: Vec<Vec<u8>> =
        tensors.iter().map(|(_, _, values)| values.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| TensorView::new(Dtype::F32, shape.clone(), b).map(|v| (*name, v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let file = safetensors::serialize(views, None).map_err(|e| e.to_string())?;
    std::fs::write(path, file).map_err(|e| e.to_string())
}

/// Reads the `(name, shape)` tensors asked for, in that order, each checked to be f32 of that
/// shape.
pub fn read(path: &Path, wanted: &[(&str, &[usize])]) -> Result<Vec<Vec<f32>>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| format!("not a safetensors file: {e}"))?;
    wanted
        .iter()
        .map(|&(name, shape)| {
            let t = file.tensor(name).map_err(|_| format!("no tensor `{name}`"))?;
            if t.dtype() != Dtype::F32 || t.shape() != shape {
                return Err(format!(
                    "tensor `{name}` is {:?} {:?}, the manifest says F32 {shape:?}",
                    t.dtype(),
                    t.shape()
                ));
            }
            Ok(t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
        })
        .collect()
}
