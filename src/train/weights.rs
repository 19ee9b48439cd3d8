//! Pretrained teacher weights in torchvision's key layout, from `.safetensors` or from
//! torchvision's own `.pth` (the zip format of `torch.save(model.state_dict())`).
//!
//! Every key the architecture needs must be present with the exact shape and dtype F32;
//! otherwise loading fails with an error that names the file and the key. BatchNorm running
//! statistics are loaded too: the teacher always runs in inference mode. Extra keys (the
//! classifier, `layer4`, `num_batches_tracked`) are ignored.

use std::path::{Path, PathBuf};

use burn::module::{Param, RunningState};
use burn::prelude::*;
use safetensors::SafeTensors;

use super::nets::backbone::{Arch, Backbone};
use super::nets::layers::ConvBn;

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a readable {format} file: {message}")]
    Format { path: PathBuf, format: &'static str, message: String },
    #[error("{path}: missing key `{key}` (expected torchvision's {arch} layout)")]
    Missing { path: PathBuf, key: String, arch: &'static str },
    #[error("{path}: key `{key}` has shape {found:?}, expected {expected:?}")]
    Shape { path: PathBuf, key: String, found: Vec<usize>, expected: Vec<usize> },
    #[error("{path}: key `{key}` has dtype {dtype}, expected F32")]
    Dtype { path: PathBuf, key: String, dtype: String },
    #[error(
        "the shipped {arch} teacher weights ({file}) are in none of: {}; give --teacher-weights FILE, or set \
         {TEACHERS_ENV}=DIR to a folder holding {file}",
        looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    ShippedMissing { arch: &'static str, file: String, looked: Vec<PathBuf> },
}

/// Environment variable naming the one folder to look in for the shipped teacher weights.
pub const TEACHERS_ENV: &str = "DSKD_TEACHERS";

/// The shipped weights of `arch`, relative to a teachers folder (`models/teachers` in the
/// repository, `share/dskd/teachers` when installed); `None` for architectures without them.
pub fn shipped_teacher_file(arch: Arch) -> Option<&'static str> {
    match arch {
        Arch::MobileNetV2 | Arch::MobileNetV2Expanded | Arch::MobileNetV2S32 => {
            Some("mobilenet_v2/mobilenet_v2-imagenet-features.safetensors")
        }
        Arch::EfficientNetLite0 | Arch::EfficientNetLite0S32 => {
            Some("efficientnet_lite0/efficientnet_lite0-imagenet-features.safetensors")
        }
        Arch::EfficientNetLite2 | Arch::ResNet18 | Arch::ResNet34 => None,
    }
}

/// The teachers folders looked in, in order. `$DSKD_TEACHERS` alone when set (an explicit
/// choice should not silently fall back to other weights); otherwise beside the binary, the
/// install prefixes, the source tree the binary was built from, and the working directory, so
/// an installed or copied trainer finds its default teacher wherever it runs.
pub fn teacher_dirs() -> Vec<PathBuf> {
    if let Some(dir) = std::env::var_os(TEACHERS_ENV) {
        return vec![PathBuf::from(dir)];
    }
    let mut dirs = Vec::new();
    if let Some(bin) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_owned)) {
        dirs.push(bin.join("teachers"));
        dirs.push(bin.join("../share/dskd/teachers"));
    }
    dirs.push(PathBuf::from("/usr/local/share/dskd/teachers"));
    dirs.push(PathBuf::from("/usr/share/dskd/teachers"));
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/teachers"));
    dirs.push(PathBuf::from("models/teachers"));
    dirs
}

/// Finds the shipped weights of `arch` (see [`teacher_dirs`]); the error lists every place
/// looked and the flag that points elsewhere.
pub fn find_shipped_teacher(arch: Arch) -> Result<PathBuf, WeightsError> {
    let file = shipped_teacher_file(arch).expect("only called for architectures with shipped weights");
    let looked: Vec<PathBuf> = teacher_dirs().into_iter().map(|d| d.join(file)).collect();
    match looked.iter().find(|p| p.is_file()) {
        Some(found) => Ok(found.clone()),
        None => Err(WeightsError::ShippedMissing { arch: arch.name(), file: file.to_string(), looked }),
    }
}

/// The tensors of one weights file.
enum Tensors<'a> {
    Safetensors(SafeTensors<'a>),
    Pth(pytorch_reader::PytorchReader),
}

/// (dtype is F32, dtype name, shape, little-endian bytes) of one tensor, if present.
type Raw = (bool, String, Vec<usize>, Vec<u8>);

struct WeightFile<'a> {
    path: &'a Path,
    tensors: Tensors<'a>,
    arch: Arch,
}

impl WeightFile<'_> {
    fn raw(&self, key: &str) -> Result<Option<Raw>, WeightsError> {
        Ok(match &self.tensors {
            Tensors::Safetensors(st) => st.tensor(key).ok().map(|v| {
                let f32 = v.dtype() == safetensors::Dtype::F32;
                (f32, format!("{:?}", v.dtype()), v.shape().to_vec(), v.data().to_vec())
            }),
            Tensors::Pth(r) => match r.get(key) {
                None => None,
                Some(t) => {
                    let bytes = t.read().map_err(|source| WeightsError::Io { path: self.path.to_owned(), source })?;
                    let f32 = t.dtype() == pytorch_reader::DType::F32;
                    Some((f32, format!("{:?}", t.dtype()), t.shape().to_vec(), bytes))
                }
            },
        })
    }

    fn get(&self, key: &str, expected: &[usize]) -> Result<TensorData, WeightsError> {
        let path = self.path.to_owned();
        let Some((is_f32, dtype, shape, bytes)) = self.raw(key)? else {
            return Err(WeightsError::Missing { path, key: key.to_owned(), arch: self.arch.name() });
        };
        if !is_f32 {
            return Err(WeightsError::Dtype { path, key: key.to_owned(), dtype });
        }
        if shape != expected {
            return Err(WeightsError::Shape { path, key: key.to_owned(), found: shape, expected: expected.to_vec() });
        }
        let values: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        Ok(TensorData::new(values, expected.to_vec()))
    }

    /// Loads conv weight and BN (gamma, beta, running mean/var) into one ConvBn.
    fn load_conv_bn(&self, layer: &mut ConvBn, conv: &str, bn: &str, device: &Device) -> Result<(), WeightsError> {
        let w_shape = layer.conv.weight.val().dims().to_vec();
        let c = w_shape[0];
        let t = |data: TensorData| -> Tensor<1> { Tensor::from_data(data, device) };
        layer.conv.weight =
            Param::from_tensor(Tensor::from_data(self.get(&format!("{conv}.weight"), &w_shape)?, device));
        layer.bn.gamma = Param::from_tensor(t(self.get(&format!("{bn}.weight"), &[c])?));
        layer.bn.beta = Param::from_tensor(t(self.get(&format!("{bn}.bias"), &[c])?));
        layer.bn.running_mean = RunningState::new(t(self.get(&format!("{bn}.running_mean"), &[c])?));
        layer.bn.running_var = RunningState::new(t(self.get(&format!("{bn}.running_var"), &[c])?));
        Ok(())
    }
}

/// A teacher of `arch` with pretrained weights from `path`, in inference mode.
pub fn load_teacher(arch: Arch, path: &Path, device: &Device) -> Result<Backbone, WeightsError> {
    let is_pth = path.extension().is_some_and(|e| e == "pth" || e == "pt");
    let bytes;
    let tensors = if is_pth {
        let r = pytorch_reader::PytorchReader::new(path).map_err(|e| WeightsError::Format {
            path: path.to_owned(),
            format: "PyTorch",
            message: e.to_string(),
        })?;
        Tensors::Pth(r)
    } else {
        bytes = std::fs::read(path).map_err(|source| WeightsError::Io { path: path.to_owned(), source })?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| WeightsError::Format {
            path: path.to_owned(),
            format: "safetensors",
            message: e.to_string(),
        })?;
        Tensors::Safetensors(st)
    };
    let file = WeightFile { path, tensors, arch };
    let mut net = Backbone::new(arch, device);
    for (layer, conv, bn) in net.named_layers_mut() {
        file.load_conv_bn(layer, &conv, &bn, device)?;
    }
    Ok(net.valid())
}

/// Random teacher weights in torchvision's key layout, as a `.safetensors` file: He-uniform
/// convolutions, batch norms near identity. For measuring a backbone's speed and shapes when
/// its pretrained weights are not at hand (`dskd-train --write-random-teacher`); a detector with
/// such a teacher has learnt nothing about images.
pub fn random_teacher_safetensors(arch: Arch, seed: u64) -> Vec<u8> {
    use safetensors::{Dtype, tensor::TensorView};
    let mut rng = crate::synth::Rng::new(seed);
    let mut net = Backbone::new(arch, &Device::flex());
    let mut table: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut put = |name: String, shape: Vec<usize>, f: &mut dyn FnMut() -> f32| {
        let n: usize = shape.iter().product();
        table.push((name, shape, (0..n).flat_map(|_| f().to_le_bytes()).collect()));
    };
    for (layer, conv, bn) in net.named_layers_mut() {
        let dims: [usize; 4] = layer.conv.weight.val().dims();
        let a = (3.0 / (dims[1] * dims[2] * dims[3]) as f32).sqrt();
        put(format!("{conv}.weight"), dims.to_vec(), &mut || rng.range(-a, a));
        for (key, lo, hi) in
            [("weight", 0.8, 1.2), ("bias", -0.1, 0.1), ("running_mean", -0.1, 0.1), ("running_var", 0.8, 1.2)]
        {
            put(format!("{bn}.{key}"), vec![dims[0]], &mut || rng.range(lo, hi));
        }
    }
    let views: Vec<(String, TensorView)> = table
        .iter()
        .map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).expect("sizes match shapes")))
        .collect();
    safetensors::serialize(views, None).expect("in-memory serialisation")
}
