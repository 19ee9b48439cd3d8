//! Sinks: where verdicts go. They receive [`Report`]s (plain data built by the pipeline) and
//! send [`Command`]s back; they know nothing of sources or the detector.

pub mod broker;
pub mod failure_log;
pub mod image_store;
pub mod mqtt;
pub mod outbox;
pub mod tls;

use serde::{Deserialize, Serialize};

/// One inspected frame, as published (`<prefix>/events` for defects, `/results` for all).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// UUIDv7: time-ordered, unique; the outbox and consumers de-duplicate on it.
    pub id: String,
    /// RFC 3339 capture time.
    pub timestamp: String,
    pub camera: String,
    pub frame_seq: u64,
    pub origin: String,
    pub verdict: String,
    pub score: f32,
    pub threshold: f32,
    pub severity: f32,
    /// `[{bbox: [x, y, w, h], area, peak}]` in source pixels.
    pub regions: serde_json::Value,
    pub model: ModelRef,
    pub latency_ms: Latency,
    /// The `request_id` of the trigger command that asked for this inspection.
    pub request_id: Option<String>,
    /// The overlay JPEG in the image store (defects only; null when off, rate-limited or the
    /// write failed).
    pub image: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelRef {
    pub name: String,
    pub version: String,
    /// sha256 of the bundle manifest (which holds the sha256 of every graph).
    pub sha256: String,
    pub precision: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    /// Frame read to verdict.
    pub frame_to_verdict: f64,
    pub inference: f64,
}

impl Report {
    pub fn is_defect(&self) -> bool {
        self.verdict == "defect"
    }
}

/// Commands arriving on `<prefix>/cmd/<name>`.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Inspect the next frame; the result carries `request_id`.
    Trigger { request_id: String },
    /// Replace the image threshold until restart.
    Threshold { request_id: String, value: f32 },
    /// Re-read the configuration and bundle, validate, then swap (a bad one changes nothing).
    Reload { request_id: String },
    /// List the review queue's newest `limit` items in the reply.
    Review { request_id: String, limit: usize },
}

impl Command {
    pub fn request_id(&self) -> &str {
        match self {
            Command::Trigger { request_id }
            | Command::Threshold { request_id, .. }
            | Command::Reload { request_id }
            | Command::Review { request_id, .. } => request_id,
        }
    }
}

/// What the pipeline hands the MQTT sink.
#[derive(Debug, Clone)]
pub enum Message {
    Report(Box<Report>),
    /// Pipeline counters for `<prefix>/telemetry`; the sink adds its outbox figures.
    Telemetry(serde_json::Value),
    /// The overlay JPEG of event `id`, for `<prefix>/events/<id>/image` (`images.mqtt`).
    Image {
        id: String,
        jpeg: Vec<u8>,
    },
    /// The drift alarm tripped or cleared: `<prefix>/drift` (retained).
    Drift(serde_json::Value),
    /// The answer to a command the pipeline carried out (reload, review), with what it
    /// returns (`items` for review) merged into the reply.
    Reply {
        request_id: String,
        command: String,
        error: Option<String>,
        data: Option<serde_json::Map<String, serde_json::Value>>,
    },
}

/// Now as RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    rfc3339(std::time::SystemTime::now())
}

/// A wall-clock time as RFC 3339 (UTC).
pub fn rfc3339(t: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(t).format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// p50 and p99 (nearest rank) of a latency sample; None when it is empty.
pub fn p50_p99(mut v: Vec<f64>) -> Option<(f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Some((at(0.5), at(0.99)))
}
