//! A failure that repeats on every frame (a full disk under the outbox) must be seen, but not
//! as one log line per frame: the first failure is logged in full, then one summary per
//! interval while it goes on, and one line when it stops. Every failure is counted.

use std::time::{Duration, Instant};

/// What to log about a repeating failure, and its counts.
#[derive(Debug)]
pub struct FailureLog {
    every: Duration,
    total: u64,
    /// Failures since the last line logged about them.
    unreported: u64,
    last_line: Option<Instant>,
    /// Failures in the current run of failures (0 while things work).
    run: u64,
    last_error: String,
}

/// A line to log.
#[derive(Debug, PartialEq)]
pub enum Line {
    /// The first failure of a run, with its error.
    First { error: String },
    /// More failures since the last line, the latest error.
    Summary { failures: u64, over: Duration, error: String },
    /// Things work again after `failures` in a row.
    Recovered { failures: u64 },
}

impl FailureLog {
    /// Summaries at most once per `every`.
    pub fn new(every: Duration) -> Self {
        Self { every, total: 0, unreported: 0, last_line: None, run: 0, last_error: String::new() }
    }

    /// Records a failure at `now`; returns the line to log, if one is due.
    pub fn failed(&mut self, now: Instant, error: impl Into<String>) -> Option<Line> {
        self.total += 1;
        self.run += 1;
        self.last_error = error.into();
        if self.run == 1 {
            self.unreported = 0;
            self.last_line = Some(now);
            return Some(Line::First { error: self.last_error.clone() });
        }
        self.unreported += 1;
        let since = self.last_line.map_or(self.every, |t| now.saturating_duration_since(t));
        if since < self.every {
            return None;
        }
        let failures = std::mem::take(&mut self.unreported);
        self.last_line = Some(now);
        Some(Line::Summary { failures, over: since, error: self.last_error.clone() })
    }

    /// Records a success; returns the recovery line when it ends a run of failures.
    pub fn succeeded(&mut self) -> Option<Line> {
        let failures = std::mem::take(&mut self.run);
        self.unreported = 0;
        (failures > 0).then_some(Line::Recovered { failures })
    }

    /// Failures since start.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Whether the last attempt failed.
    pub fn failing(&self) -> bool {
        self.run > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_failure_then_one_summary_per_interval_then_recovery() {
        let t0 = Instant::now();
        let mut log = FailureLog::new(Duration::from_secs(10));
        assert_eq!(log.succeeded(), None, "nothing to recover from");
        assert_eq!(log.failed(t0, "disk full"), Some(Line::First { error: "disk full".into() }));
        // 8 frames a second for 25 s: two summaries, not 200 lines.
        let mut lines = Vec::new();
        for i in 1..200u64 {
            if let Some(l) = log.failed(t0 + Duration::from_millis(125 * i), format!("disk full {i}")) {
                lines.push(l);
            }
        }
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(matches!(&lines[0], Line::Summary { failures: 80, error, .. } if error == "disk full 80"), "{lines:?}");
        assert!(log.failing());
        assert_eq!(log.total(), 200);
        assert_eq!(log.succeeded(), Some(Line::Recovered { failures: 200 }));
        assert!(!log.failing());
        // A new run starts with a full line again; the total keeps counting.
        assert!(matches!(log.failed(t0 + Duration::from_secs(60), "again"), Some(Line::First { .. })));
        assert_eq!(log.total(), 201);
    }
}
