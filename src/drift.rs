//! The score-drift alarm: has the line stopped looking like the images the model was
//! calibrated on? (The camera was knocked, the light changed, the product drifted.)
//!
//! Reference: the anomaly scores of the bundle's held-out normal images
//! (`calibration.normal_scores`). Live: the scores of the last `window` frames.
//! Statistic: the two-sample Kolmogorov–Smirnov distance D between them (the largest gap
//! between their cumulative distributions), computed every `window / 4` frames once the window
//! is full. It trips when D exceeds the critical value at `alpha`,
//! `sqrt(-ln(alpha/2)/2) · sqrt((n+m)/(n·m))`, and clears when D falls below the critical
//! value at 0.05 (hysteresis, so it does not flap). Every frame counts, defective or not: a few
//! real defects in a window move D by their share only (KS is a distance between
//! distributions, not a mean), while a change that makes every frame score over the threshold
//! (the light changed so much that all look defective) is the loudest drift there is, and an
//! alarm that left such frames out would never see it. `alpha` is per check; the rate of false trips it gives
//! over hours of unshifted frames is measured in the tests (see `docs/RELIABILITY.md`).

use std::collections::VecDeque;

use serde::Serialize;

/// Where the monitor stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftState {
    /// Fewer than `window` frames seen since start (or reload).
    WarmingUp,
    Ok,
    Drifting,
}

/// What telemetry, status and the `drift` topic carry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftStatus {
    pub state: DriftState,
    /// The last KS distance computed (null while warming up).
    pub statistic: Option<f64>,
    /// The distance that trips the alarm.
    pub critical: f64,
    /// Median live score minus median reference score, in score units (the direction).
    pub median_shift: Option<f64>,
    pub window: usize,
    pub reference: usize,
}

/// A change of state worth an event (the figures are in [`DriftMonitor::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Tripped,
    Cleared,
}

/// Per-check false-alarm probability when the hysteresis clears the alarm.
const CLEAR_ALPHA: f64 = 0.05;

/// The KS critical distance for samples of `n` and `m` at level `alpha` (asymptotic).
pub fn critical(alpha: f64, n: usize, m: usize) -> f64 {
    let c = (-(alpha / 2.0).ln() / 2.0).sqrt();
    c * ((n + m) as f64 / (n * m).max(1) as f64).sqrt()
}

/// The two-sample KS distance between two sorted samples.
pub fn ks_distance(a: &[f32], b: &[f32]) -> f64 {
    let (n, m) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut d) = (0, 0, 0.0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / n - j as f64 / m).abs());
    }
    d
}

fn median(sorted: &[f32]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 { sorted[n / 2] as f64 } else { (sorted[n / 2 - 1] as f64 + sorted[n / 2] as f64) / 2.0 }
}

/// The sliding window and its state.
#[derive(Debug)]
pub struct DriftMonitor {
    reference: Vec<f32>,
    window: VecDeque<f32>,
    size: usize,
    check_every: usize,
    since_check: usize,
    /// The distance below which a tripped alarm clears (the trip value is `status.critical`).
    clear: f64,
    status: DriftStatus,
}

impl DriftMonitor {
    /// A monitor against `reference` normal scores, over `window` live scores, tripping at
    /// `alpha`. None without reference scores (bundles made before they were stored).
    pub fn new(mut reference: Vec<f32>, window: usize, alpha: f64) -> Option<Self> {
        reference.retain(|s| s.is_finite());
        if reference.len() < 2 || window < 4 {
            return None;
        }
        reference.sort_by(f32::total_cmp);
        let (n, m) = (window, reference.len());
        let status = DriftStatus {
            state: DriftState::WarmingUp,
            statistic: None,
            critical: critical(alpha, n, m),
            median_shift: None,
            window,
            reference: m,
        };
        Some(Self {
            reference,
            window: VecDeque::with_capacity(window),
            size: window,
            check_every: (window / 4).max(1),
            since_check: 0,
            clear: critical(CLEAR_ALPHA, n, m),
            status,
        })
    }

    pub fn status(&self) -> &DriftStatus {
        &self.status
    }

    /// Adds the score of an inspected frame; a change of state when this one causes it.
    pub fn observe(&mut self, score: f32) -> Option<Change> {
        if !score.is_finite() {
            return None;
        }
        if self.window.len() == self.size {
            self.window.pop_front();
        }
        self.window.push_back(score);
        self.since_check += 1;
        if self.window.len() < self.size || self.since_check < self.check_every {
            return None;
        }
        self.since_check = 0;
        let mut live: Vec<f32> = self.window.iter().copied().collect();
        live.sort_by(f32::total_cmp);
        let d = ks_distance(&live, &self.reference);
        self.status.statistic = Some(d);
        self.status.median_shift = Some(median(&live) - median(&self.reference));
        let before = self.status.state;
        self.status.state = match before {
            DriftState::Drifting if d >= self.clear => DriftState::Drifting,
            _ if d > self.status.critical => DriftState::Drifting,
            _ => DriftState::Ok,
        };
        match (before, self.status.state) {
            (DriftState::Drifting, DriftState::Ok) => Some(Change::Cleared),
            (b, DriftState::Drifting) if b != DriftState::Drifting => Some(Change::Tripped),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::Rng;

    #[test]
    fn ks_distance_of_known_samples() {
        assert_eq!(ks_distance(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]), 0.0);
        assert_eq!(ks_distance(&[1.0, 2.0], &[3.0, 4.0]), 1.0);
        assert!((ks_distance(&[1.0, 2.0, 3.0, 4.0], &[3.0, 4.0, 5.0, 6.0]) - 0.5).abs() < 1e-12);
        // 1.36 is the textbook two-sample constant at 5%.
        assert!((critical(0.05, 100, 100) - 1.358 * (0.02f64).sqrt()).abs() < 1e-3);
    }

    /// Reference: 76 scores of a skewed normal-score shape; live: fresh draws of the same.
    fn draw(rng: &mut Rng) -> f32 {
        // Gumbel(2, 0.3) by inversion, like anomaly scores of normal images.
        2.0 - 0.3 * (-(rng.unit().clamp(1e-6, 1.0 - 1e-6)).ln()).ln()
    }

    #[test]
    fn trips_on_a_shift_clears_after_it_and_stays_quiet_on_unshifted_hours() {
        let mut rng = Rng::new(9);
        let reference: Vec<f32> = (0..76).map(|_| draw(&mut rng)).collect();
        assert!(DriftMonitor::new(vec![1.0], 200, 1e-4).is_none(), "too few reference scores");

        // Ten simulated hours at 10 frames/s, unshifted: no trip.
        let mut m = DriftMonitor::new(reference.clone(), 200, 1e-4).unwrap();
        let mut trips = 0;
        for _ in 0..10 * 36_000 {
            trips += matches!(m.observe(draw(&mut rng)), Some(Change::Tripped)) as usize;
        }
        assert_eq!(trips, 0, "false trips in 10 unshifted hours");
        assert_eq!(m.status().state, DriftState::Ok);

        // Scores up by one reference spread (~0.37): trips within two windows.
        let at = (0..400).position(|_| matches!(m.observe(draw(&mut rng) + 0.4), Some(Change::Tripped)));
        let at = at.expect("a shift trips the alarm");
        assert!(at < 400, "tripped after {at} shifted frames");
        let s = m.status().clone();
        assert_eq!(s.state, DriftState::Drifting);
        assert!(s.statistic.unwrap() > s.critical && s.median_shift.unwrap() > 0.2, "{s:?}");

        // Back to normal: clears within two windows.
        let back = (0..400).position(|_| matches!(m.observe(draw(&mut rng)), Some(Change::Cleared)));
        assert!(back.is_some(), "the alarm clears once the scores are back");
    }
}
