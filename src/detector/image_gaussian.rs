//! A score of the image as a whole: how far its teacher feature statistics lie from the
//! normal images' (Rippel, Mertens & Merhof 2020, "Modeling the distribution of normal data in
//! pre-trained deep features for anomaly detection").
//!
//! Statistics of one image: the mean and the standard deviation over positions of every
//! channel of every teacher level. The normal images' statistics are modelled as one
//! Gaussian (their mean, and their covariance shrunk towards a scaled identity by Ledoit and
//! Wolf's rule, so that a few hundred images suffice for hundreds of dimensions); an image
//! scores its Mahalanobis distance to it. Defects that change a surface as a whole (uneven
//! brightness or texture) barely raise any one position of the anomaly map but move these
//! statistics; the score joins the map's as [`ImageGaussian::fuse`] says. Trainer and
//! daemon run this same code on their own teacher features.

use std::path::Path;

use ndarray::{Array1, Array2};

use super::Precision;
use super::anomaly_map::FeatureMap;
use super::memory_bank::Divisor;
use super::tensor_file;
use crate::bundle::{Bundle, GaussianStatistics};

#[derive(Debug, thiserror::Error)]
pub enum ImageGaussianError {
    #[error("{path}: {message}")]
    File { path: std::path::PathBuf, message: String },
    #[error("the image Gaussian needs at least 2 training images' statistics, got {0}")]
    TooFew(usize),
    #[error("the image Gaussian's covariance is not positive definite (dimension {0})")]
    NotDefinite(usize),
    #[error("the image Gaussian has {found} dimensions, the teacher's statistics {expected}")]
    Dims { found: usize, expected: usize },
    #[error("the manifest's image Gaussian has no int8 fit (image_gaussian.int8) for the int8 graphs")]
    NoInt8,
}

/// Per-channel mean and standard deviation over positions (and the maximum, with
/// [`GaussianStatistics::MeanStdMax`]), level by level (`[mean of level 1's channels, std of
/// level 1's channels, (max of level 1's,) mean of level 2's, ...]`).
pub fn statistics(levels: &[FeatureMap], which: GaussianStatistics) -> Vec<f32> {
    let mut out = Vec::with_capacity(dims(levels.iter().map(|f| f.channels), which));
    for f in levels {
        let n = (f.height * f.width) as f64;
        let channels = || f.data.chunks_exact(f.height * f.width);
        let mut stds = Vec::with_capacity(f.channels);
        for channel in channels() {
            let mean = channel.iter().map(|&v| v as f64).sum::<f64>() / n;
            let var = channel.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
            out.push(mean as f32);
            stds.push(var.sqrt() as f32);
        }
        out.extend(stds);
        // Only when modelled: this runs on every frame.
        if which == GaussianStatistics::MeanStdMax {
            out.extend(channels().map(|c| c.iter().copied().fold(f32::NEG_INFINITY, f32::max)));
        }
    }
    out
}

/// Length of [`statistics`] for levels of these channel counts.
pub fn dims(channels: impl IntoIterator<Item = usize>, which: GaussianStatistics) -> usize {
    channels.into_iter().map(|c| which.per_channel() * c).sum()
}

/// The normal images' Gaussian and how its distance joins the map's score.
#[derive(Debug, Clone)]
pub struct ImageGaussian {
    /// Which statistics of an image it models.
    pub statistics: GaussianStatistics,
    mean: Array1<f32>,
    /// Inverse of the shrunk covariance.
    precision: Array2<f32>,
    /// Brings distances to the map score's units: see [`Self::fuse`].
    pub fusion: Fusion,
}

/// `score + scale · (distance − offset)`: the distance's excess over the held-out normals'
/// mean, in units of the map score's spread on them per unit of the distance's spread
/// (population standard deviations), so
/// that on normal images both terms vary alike and neither one's noise outweighs the other's.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Fusion {
    pub offset: f32,
    pub scale: f32,
}

/// Tensor names inside the safetensors file.
const MEAN: &str = "mean";
const PRECISION: &str = "precision";

impl ImageGaussian {
    /// Mean and Ledoit–Wolf-shrunk covariance of the training images' statistics, inverted.
    pub fn fit(samples: &[Vec<f32>], statistics: GaussianStatistics) -> Result<Self, ImageGaussianError> {
        let n = samples.len();
        if n < 2 {
            return Err(ImageGaussianError::TooFew(n));
        }
        let p = samples[0].len();
        let x = Array2::from_shape_fn((n, p), |(i, j)| samples[i][j] as f64);
        let mean = x.mean_axis(ndarray::Axis(0)).expect("rows");
        let centred = &x - &mean;
        let covariance = shrunk_covariance(&centred);
        let precision = invert_spd(&covariance).ok_or(ImageGaussianError::NotDefinite(p))?;
        Ok(Self {
            statistics,
            mean: mean.mapv(|v| v as f32),
            precision: precision.mapv(|v| v as f32),
            fusion: Fusion::default(),
        })
    }

    /// The bundle's image Gaussian for `precision`, when it has one, checked against its
    /// teacher's levels.
    pub fn load(bundle: &Bundle, precision: Precision) -> Result<Option<Self>, ImageGaussianError> {
        let Some(spec) = &bundle.manifest.image_gaussian else { return Ok(None) };
        let expected = dims(bundle.manifest.teacher.channels.iter().copied(), spec.statistics);
        if spec.dims != expected {
            return Err(ImageGaussianError::Dims { found: spec.dims, expected });
        }
        let fit = match precision {
            Precision::F32 => &spec.f32,
            Precision::Int8 => spec.int8.as_ref().ok_or(ImageGaussianError::NoInt8)?,
        };
        let fusion = Fusion { offset: fit.offset, scale: fit.scale };
        Ok(Some(Self::read(&bundle.path(&fit.file), spec.dims, spec.statistics, fusion)?))
    }

    pub fn dims(&self) -> usize {
        self.mean.len()
    }

    /// Mahalanobis distance of the image with these teacher levels to the normal images'.
    pub fn image_distance(&self, levels: &[FeatureMap]) -> f32 {
        self.distance(&statistics(levels, self.statistics))
    }

    /// Mahalanobis distance of one image's [`statistics`] to the normal images'.
    pub fn distance(&self, stats: &[f32]) -> f32 {
        let d: Array1<f32> = Array1::from_iter(stats.iter().zip(&self.mean).map(|(s, m)| s - m));
        d.dot(&self.precision.dot(&d)).max(0.0).sqrt()
    }

    /// The image's score: the map's `score` plus the distance brought to its units.
    pub fn fuse(&self, score: f32, distance: f32) -> f32 {
        score + self.fusion.scale * (distance - self.fusion.offset)
    }

    /// The fusion from the held-out normals' map scores and distances: offset their mean
    /// distance, scale the ratio of the two spreads.
    pub fn with_fusion(self, map_scores: &[f32], distances: &[f32]) -> Self {
        // The hybrid map's divisors, reused: their mean and their spread.
        let offset = Divisor::Mean.of(distances);
        let scale = Divisor::Spread.of(map_scores) / Divisor::Spread.of(distances);
        Self { fusion: Fusion { offset, scale }, ..self }
    }

    /// Writes `mean` `[dims]` and `precision` `[dims, dims]` as f32 safetensors.
    pub fn write(&self, path: &Path) -> Result<(), ImageGaussianError> {
        let p = self.dims();
        let precision = self.precision.as_standard_layout();
        let tensors = [
            (MEAN, vec![p], self.mean.as_slice().expect("contiguous")),
            (PRECISION, vec![p, p], precision.as_slice().expect("standard layout")),
        ];
        tensor_file::write(path, &tensors)
            .map_err(|message| ImageGaussianError::File { path: path.to_owned(), message })
    }

    /// Reads a file written by [`Self::write`], checking it has `dims` dimensions.
    pub fn read(
        path: &Path,
        dims: usize,
        statistics: GaussianStatistics,
        fusion: Fusion,
    ) -> Result<Self, ImageGaussianError> {
        let err = |message: String| ImageGaussianError::File { path: path.to_owned(), message };
        let [mean, precision]: [Vec<f32>; 2] = tensor_file::read(path, &[(MEAN, &[dims]), (PRECISION, &[dims, dims])])
            .map_err(err)?
            .try_into()
            .expect("two asked");
        let precision = Array2::from_shape_vec((dims, dims), precision).map_err(|e| err(e.to_string()))?;
        Ok(Self { statistics, mean: Array1::from(mean), precision, fusion })
    }
}

/// Ledoit–Wolf: the sample covariance `S` of the centred rows, pulled towards `μI` (`μ` its
/// mean eigenvalue) by the share the rows' own scatter around `S` says it cannot be trusted.
fn shrunk_covariance(centred: &Array2<f64>) -> Array2<f64> {
    let (n, p) = centred.dim();
    let s = centred.t().dot(centred) / n as f64;
    let mu = s.diag().sum() / p as f64;
    let mut target_gap = s.clone();
    target_gap.diag_mut().mapv_inplace(|v| v - mu);
    let delta = target_gap.iter().map(|v| v * v).sum::<f64>();
    // ‖x xᵀ − S‖² = ‖x‖⁴ − 2 xᵀSx + ‖S‖², summed over the rows.
    let s_norm = s.iter().map(|v| v * v).sum::<f64>();
    let scatter = centred
        .rows()
        .into_iter()
        .map(|x| {
            let sq = x.dot(&x);
            sq * sq - 2.0 * x.dot(&s.dot(&x)) + s_norm
        })
        .sum::<f64>()
        / (n * n) as f64;
    let shrink = if delta > 0.0 { scatter.min(delta) / delta } else { 1.0 };
    let mut out = s * (1.0 - shrink);
    out.diag_mut().mapv_inplace(|v| v + shrink * mu);
    out
}

/// Inverse of a symmetric positive definite matrix through its Cholesky factor `L`
/// (`A⁻¹ = L⁻ᵀ L⁻¹`); `None` when `A` is not positive definite.
fn invert_spd(a: &Array2<f64>) -> Option<Array2<f64>> {
    let p = a.nrows();
    let mut l = Array2::<f64>::zeros((p, p));
    for j in 0..p {
        let d = a[[j, j]] - (0..j).map(|k| l[[j, k]] * l[[j, k]]).sum::<f64>();
        if d <= 0.0 || !d.is_finite() {
            return None;
        }
        l[[j, j]] = d.sqrt();
        for i in j + 1..p {
            let s = a[[i, j]] - (0..j).map(|k| l[[i, k]] * l[[j, k]]).sum::<f64>();
            l[[i, j]] = s / l[[j, j]];
        }
    }
    // L⁻¹ by forward substitution, column by column.
    let mut inv_l = Array2::<f64>::zeros((p, p));
    for c in 0..p {
        for i in c..p {
            let rhs = if i == c { 1.0 } else { 0.0 };
            let s = rhs - (c..i).map(|k| l[[i, k]] * inv_l[[k, c]]).sum::<f64>();
            inv_l[[i, c]] = s / l[[i, i]];
        }
    }
    Some(inv_l.t().dot(&inv_l))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(data: Vec<f32>, channels: usize, height: usize, width: usize) -> FeatureMap {
        FeatureMap { data, channels, height, width }
    }

    #[test]
    fn statistics_are_channel_means_then_stds_per_level() {
        let a = level(vec![1.0, 3.0, 5.0, 5.0], 2, 1, 2);
        let b = level(vec![2.0], 1, 1, 1);
        assert_eq!(
            statistics(&[a.clone(), b.clone()], GaussianStatistics::MeanStd),
            vec![2.0, 5.0, 1.0, 0.0, 2.0, 0.0]
        );
        assert_eq!(dims([2, 1], GaussianStatistics::MeanStd), 6);
        let with_max = statistics(&[a, b], GaussianStatistics::MeanStdMax);
        assert_eq!(with_max, vec![2.0, 5.0, 1.0, 0.0, 3.0, 5.0, 2.0, 0.0, 2.0]);
        assert_eq!(dims([2, 1], GaussianStatistics::MeanStdMax), 9);
    }

    #[test]
    fn inverse_times_matrix_is_identity() {
        let a = ndarray::array![[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]];
        let inv = invert_spd(&a).unwrap();
        let eye = a.dot(&inv);
        for i in 0..3 {
            for j in 0..3 {
                assert!((eye[[i, j]] - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12, "{eye:?}");
            }
        }
        assert!(invert_spd(&ndarray::array![[1.0, 2.0], [2.0, 1.0]]).is_none());
    }

    #[test]
    fn distance_grows_away_from_the_normals_and_fusion_centres_it() {
        let mut rng = crate::synth::Rng::new(5);
        let samples: Vec<Vec<f32>> = (0..200).map(|_| (0..4).map(|_| rng.unit()).collect()).collect();
        let g = ImageGaussian::fit(&samples, GaussianStatistics::MeanStd).unwrap();
        let near = g.distance(&[0.5, 0.5, 0.5, 0.5]);
        let far = g.distance(&[0.5, 0.5, 0.5, 3.0]);
        assert!(near < 1.0 && far > 5.0, "near {near}, far {far}");
        let distances: Vec<f32> = samples.iter().map(|s| g.distance(s)).collect();
        let scores = vec![10.0, 12.0];
        let g = g.with_fusion(&scores, &distances);
        let mean = Divisor::Mean.of(&distances);
        assert!((g.fuse(11.0, mean) - 11.0).abs() < 1e-4);
        assert!(g.fuse(11.0, far) > 11.0 + 4.0 * g.fusion.scale);
    }

    #[test]
    fn file_round_trips_and_checks_its_dims() {
        let samples = vec![vec![0.0, 1.0], vec![1.0, 0.0], vec![0.5, 0.7]];
        let g = ImageGaussian::fit(&samples, GaussianStatistics::MeanStd).unwrap();
        let path = std::env::temp_dir().join(format!("dskd-gauss-{}.safetensors", std::process::id()));
        g.write(&path).unwrap();
        let back = ImageGaussian::read(&path, 2, GaussianStatistics::MeanStd, Fusion::default()).unwrap();
        assert_eq!(back.distance(&[2.0, 2.0]), g.distance(&[2.0, 2.0]));
        assert!(ImageGaussian::read(&path, 3, GaussianStatistics::MeanStd, Fusion::default()).is_err());
        std::fs::remove_file(path).unwrap();
    }
}
