//! Pretrained teacher weights from a safetensors file in torchvision's key layout.
//!
//! Every key the architecture needs must be present with the exact shape and dtype F32;
//! otherwise loading fails with an error that names the file and the key. BatchNorm running
//! statistics are loaded too: the teacher always runs in inference mode.

use std::path::{Path, PathBuf};

use burn::module::{Param, RunningState};
use burn::prelude::*;
use safetensors::{Dtype, SafeTensors};

use super::nets::layers::ConvBn;
use super::nets::mobilenet_v2::MobileNetV2;

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a safetensors file: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: missing key `{key}` (expected torchvision's {arch} layout)")]
    Missing { path: PathBuf, key: String, arch: &'static str },
    #[error("{path}: key `{key}` has shape {found:?}, expected {expected:?}")]
    Shape { path: PathBuf, key: String, found: Vec<usize>, expected: Vec<usize> },
    #[error("{path}: key `{key}` has dtype {dtype}, expected F32")]
    Dtype { path: PathBuf, key: String, dtype: String },
    #[error(
        "{path}: only .safetensors teacher weights are read; convert a torchvision .pth with `safetensors.torch.save_file(torch.load(f), out)`"
    )]
    Unsupported { path: PathBuf },
}

/// The tensors of one safetensors file, read with key/shape/dtype checks.
struct WeightFile<'a> {
    path: &'a Path,
    tensors: SafeTensors<'a>,
    arch: &'static str,
}

impl WeightFile<'_> {
    fn get(&self, key: &str, expected: &[usize], device: &Device) -> Result<TensorData, WeightsError> {
        let view = self.tensors.tensor(key).map_err(|_| WeightsError::Missing {
            path: self.path.to_owned(),
            key: key.to_owned(),
            arch: self.arch,
        })?;
        if view.dtype() != Dtype::F32 {
            return Err(WeightsError::Dtype {
                path: self.path.to_owned(),
                key: key.to_owned(),
                dtype: format!("{:?}", view.dtype()),
            });
        }
        if view.shape() != expected {
            return Err(WeightsError::Shape {
                path: self.path.to_owned(),
                key: key.to_owned(),
                found: view.shape().to_vec(),
                expected: expected.to_vec(),
            });
        }
        let _ = device;
        let values: Vec<f32> =
            view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        Ok(TensorData::new(values, expected.to_vec()))
    }

    /// Loads conv weight and BN (gamma, beta, running mean/var) into one ConvBn.
    fn load_conv_bn(&self, layer: &mut ConvBn, conv: &str, bn: &str, device: &Device) -> Result<(), WeightsError> {
        let w_shape = layer.conv.weight.val().dims().to_vec();
        let c = w_shape[0];
        let t = |data: TensorData| -> Tensor<1> { Tensor::from_data(data, device) };
        layer.conv.weight =
            Param::from_tensor(Tensor::from_data(self.get(&format!("{conv}.weight"), &w_shape, device)?, device));
        layer.bn.gamma = Param::from_tensor(t(self.get(&format!("{bn}.weight"), &[c], device)?));
        layer.bn.beta = Param::from_tensor(t(self.get(&format!("{bn}.bias"), &[c], device)?));
        layer.bn.running_mean = RunningState::new(t(self.get(&format!("{bn}.running_mean"), &[c], device)?));
        layer.bn.running_var = RunningState::new(t(self.get(&format!("{bn}.running_var"), &[c], device)?));
        Ok(())
    }
}

/// Reads the file and checks it is safetensors (not a pickle).
fn read(path: &Path) -> Result<Vec<u8>, WeightsError> {
    if path.extension().is_some_and(|e| e == "pth" || e == "pt") {
        return Err(WeightsError::Unsupported { path: path.to_owned() });
    }
    std::fs::read(path).map_err(|source| WeightsError::Io { path: path.to_owned(), source })
}

/// A MobileNetV2 teacher (to `features.13`) with pretrained weights, in inference mode.
pub fn load_mobilenet_v2(path: &Path, device: &Device) -> Result<MobileNetV2, WeightsError> {
    let bytes = read(path)?;
    let tensors = SafeTensors::deserialize(&bytes)
        .map_err(|e| WeightsError::Format { path: path.to_owned(), message: e.to_string() })?;
    let file = WeightFile { path, tensors, arch: "mobilenet_v2" };
    let mut net = MobileNetV2::new(device);
    let names: Vec<(String, String)> = net.param_names().into_iter().map(|(_, c, b)| (c, b)).collect();
    for (layer, (conv, bn)) in net.layers_mut().into_iter().zip(names) {
        file.load_conv_bn(layer, &conv, &bn, device)?;
    }
    Ok(net.valid())
}
