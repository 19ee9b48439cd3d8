//! The ceiling of the teacher's own features (`dskd eval --knn`): the bundle's teacher graph
//! scored by nearest normal neighbour ([`crate::detector::memory_bank`]), with the same
//! metrics as the students.
//!
//! Fit, from a split file's normals only: the bank from the `train` images' teacher features
//! (tract, the bundle's graph and preprocessing), the threshold from the `val` images' maps
//! (the bundle's Gumbel calibration). The map is the bank's distance map, blurred and scored as
//! the students' maps are.
//!
//! What it answers: if the teacher's features, scored this way, separate defects far better
//! than the students, the students lose information and distillation is what to improve; if
//! not, the teacher's features are the limit. With `fuse`, the students' map is added: the
//! hybrid that `dskd-train --memory-bank` builds into bundles, measured without exporting one.

use std::path::PathBuf;

use image::DynamicImage;

use crate::augment::Augment;
use crate::bundle::{Bundle, Calibration};
use crate::dataset;
use crate::detector::anomaly_map::{self, Map, MapSettings};
use crate::detector::memory_bank::{Divisor, FitOptions, Hybrid, MemoryBank};
use crate::detector::{Detector, DetectorError, Inspection, Precision, Timings, verdict};
use crate::preprocess::{self, InputSpec};
use crate::tiling;

/// How the nearest-neighbour scorer is built.
#[derive(Debug, Clone)]
pub struct KnnOptions {
    /// Split file whose `train` lines fill the bank and `val` lines set the thresholds.
    pub split: PathBuf,
    /// Teacher levels used, 1-based (the bundle's pyramid taps, finest first).
    pub levels: Vec<usize>,
    /// Memory bank size (greedy coreset of the training features).
    pub bank: usize,
    /// Training features the coreset is chosen from (a random subset when there are more).
    pub candidates: usize,
    pub seed: u64,
    pub progress: bool,
    /// Add the bundle's students' map to the kNN map, each divided by its mean image score on
    /// the `val` normals so both weigh alike (the hybrid map).
    pub fuse: bool,
    /// With `fuse`: the kNN map's weight against the students' (1 = alike on normals).
    pub knn_weight: f32,
    /// With `fuse`: what each map is divided by (its normals' mean score, or their spread).
    pub divisor: Divisor,
    /// Flipped or turned copies of the `train` images in the bank too.
    pub augment: Augment,
}

impl KnnOptions {
    /// One line saying what was scored, for reports.
    pub fn describe(&self) -> String {
        let levels: Vec<String> = self.levels.iter().map(|l| l.to_string()).collect();
        let fused = if self.fuse {
            format!(" + students (knn weight {}, divided by {:?})", self.knn_weight, self.divisor)
        } else {
            String::new()
        };
        let aug =
            if self.augment == Augment::None { String::new() } else { format!(", augment {}", self.augment.name()) };
        format!("knn (teacher levels {}, bank {}{aug}){fused}", levels.join("+"), self.bank)
    }
}

/// The fitted scorer: the bundle's teacher plan, the bank and calibrated thresholds.
pub struct KnnScorer {
    detector: Detector,
    input: InputSpec,
    map: MapSettings,
    /// The bank, with the divisors of the students' map when fused (`fuse`).
    hybrid: Hybrid,
    fuse: bool,
    pub calibration: Calibration,
}

#[derive(Debug, thiserror::Error)]
pub enum KnnError {
    #[error("{0}: a split file with `train` and `val` lines is needed to fit the bank and threshold")]
    NoSplit(PathBuf),
}

impl KnnScorer {
    /// Builds the bank from the split's `train` images and calibrates on its `val` images.
    pub fn fit(bundle: &Bundle, opts: &KnnOptions) -> anyhow::Result<Self> {
        let detector = Detector::load(bundle, Precision::F32)?;
        MemoryBank::check_levels(&opts.levels, bundle.manifest.teacher.channels.len())?;
        if !opts.split.is_file() {
            return Err(KnnError::NoSplit(opts.split.clone()).into());
        }
        let entries = dataset::read_split(&opts.split)?;
        let paths = |role: &str| -> Vec<PathBuf> {
            entries.iter().filter(|e| e.role == role).map(|e| e.path.clone()).collect()
        };
        let (train, val) = (paths("train"), paths("val"));
        if train.is_empty() || val.len() < 2 {
            return Err(KnnError::NoSplit(opts.split.clone()).into());
        }
        let fit = FitOptions {
            levels: opts.levels.clone(),
            size: opts.bank,
            candidates: opts.candidates,
            seed: opts.seed,
            progress: opts.progress,
            augment: opts.augment,
            half: false,
        };
        let bank = MemoryBank::fit(&detector, &train, &fit)?;
        let mut scorer = Self {
            input: bundle.manifest.input.clone(),
            map: bundle.manifest.map.clone(),
            detector,
            hybrid: Hybrid::new(bank, &[], &[], 1.0, Divisor::Mean),
            fuse: opts.fuse,
            calibration: bundle.manifest.calibration.clone(),
        };

        let mut val_maps = Vec::with_capacity(val.len());
        for path in &val {
            val_maps.push(scorer.maps(&preprocess::load_image(path)?)?);
        }
        if opts.fuse {
            let scores = |maps: Vec<&Map>| maps.iter().map(|m| anomaly_map::score(m, scorer.map.score)).collect();
            let k: Vec<f32> = scores(val_maps.iter().map(|m| &m.0).collect());
            let s: Vec<f32> = scores(val_maps.iter().filter_map(|m| m.1.as_ref()).collect());
            scorer.hybrid = Hybrid::new(scorer.hybrid.bank, &s, &k, opts.knn_weight, opts.divisor);
        }
        let (mut scores, mut pixels) = (Vec::new(), Vec::new());
        for (knn, students) in val_maps {
            let map = scorer.fused(knn, students);
            scores.push(anomaly_map::score(&map, scorer.map.score));
            pixels.extend_from_slice(&map.data);
        }
        let rate = bundle.manifest.calibration.target_false_alarm_rate;
        scorer.calibration = crate::calibrate::calibrate(&scores, &mut pixels, rate)?;
        Ok(scorer)
    }

    /// Anomaly map at input size and its score.
    fn map(&self, img: &DynamicImage) -> Result<(Map, f32), DetectorError> {
        let (knn, students) = self.maps(img)?;
        let map = self.fused(knn, students);
        let score = anomaly_map::score(&map, self.map.score);
        Ok((map, score))
    }

    /// The kNN map and, when fused, the students' map of the bundle (both at the input's
    /// canvas size, tiles stitched), from one run of the networks per tile.
    fn maps(&self, img: &DynamicImage) -> Result<(Map, Option<Map>), DetectorError> {
        let (h, w) = (self.input.height as usize, self.input.width as usize);
        let (mut knn, mut students) = (Vec::new(), Vec::new());
        for input in preprocess::to_tiles(img, &self.input) {
            let teacher = if self.fuse {
                let f = self.detector.features(&input, &mut Timings::default())?;
                students.push(self.detector.students_map(&f.teacher, &f.e, &f.d));
                f.teacher
            } else {
                self.detector.teacher_features(&input)?
            };
            knn.push(self.hybrid.bank.map(&teacher, h, w, self.map.sigma, 2));
        }
        let join = |maps| tiling::join(maps, &self.input.tiles, self.input.width, self.input.height);
        let students = if self.fuse { Some(join(students)) } else { None };
        Ok((join(knn), students))
    }

    /// The kNN map alone, or fused with the students' map by the hybrid's divisors.
    fn fused(&self, knn: Map, students: Option<Map>) -> Map {
        match students {
            Some(st) => self.hybrid.fuse_maps(st, &knn, None),
            None => knn,
        }
    }
}

impl super::Inspect for KnnScorer {
    fn inspect(&self, img: &DynamicImage) -> Result<Inspection, DetectorError> {
        let (map, score) = self.map(img)?;
        let c = &self.calibration;
        let verdict = verdict::decide(&map, score, c.threshold, c.pixel_threshold, img.width(), img.height());
        Ok(Inspection { map, verdict, timings: Timings::default() })
    }

    fn thresholds(&self) -> (f32, f32) {
        (self.calibration.threshold, self.calibration.pixel_threshold)
    }
}
