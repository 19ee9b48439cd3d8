//! Frame sources: each is a free async loop that pushes frames into the queue until it runs
//! dry or shutdown is signalled. Sources know nothing of the detector or the sinks.

pub mod camera;
pub mod dir;
pub mod genicam;
pub mod pipe;
pub mod pixels;
pub mod synthetic;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use image::DynamicImage;
use tokio::sync::{mpsc, watch};

use crate::config::{SourceConfig, SourceKind};
use crate::queue::DropOldest;

/// One captured frame.
pub struct Frame {
    /// Increasing per source, from 0.
    pub seq: u64,
    pub image: DynamicImage,
    /// Wall-clock capture time (for events).
    pub captured: SystemTime,
    /// Monotonic read time (for latencies).
    pub read_at: Instant,
    /// Where it came from (file name, command, "synthetic").
    pub origin: String,
}

impl Frame {
    pub fn new(seq: u64, image: DynamicImage, origin: String) -> Self {
        Self { seq, image, captured: SystemTime::now(), read_at: Instant::now(), origin }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{0}")]
    Data(String),
}

/// Sleeps out the rest of a frame period; false when shutdown came first.
pub(crate) async fn pace(period: Option<Duration>, last: &mut Instant, shutdown: &mut watch::Receiver<bool>) -> bool {
    if let Some(p) = period {
        let next = *last + p;
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = shutdown.changed() => return false,
        }
        *last = Instant::now();
    }
    !*shutdown.borrow()
}

pub(crate) fn period(rate_hz: f64) -> Option<Duration> {
    (rate_hz > 0.0).then(|| Duration::from_secs_f64(1.0 / rate_hz))
}

/// Runs the configured source until it ends or shutdown is signalled; closes the queue.
/// `triggers` carries one message per external trigger (`cmd/trigger`): a camera triggered
/// by software fires on each; the other sources never read it.
pub async fn run(
    cfg: SourceConfig,
    queue: Arc<DropOldest<Frame>>,
    shutdown: watch::Receiver<bool>,
    triggers: mpsc::UnboundedReceiver<()>,
) -> Result<(), SourceError> {
    let result = match cfg.kind {
        SourceKind::Dir => dir::run(&cfg, &queue, shutdown).await,
        SourceKind::Pipe => pipe::run(&cfg, &queue, shutdown).await,
        SourceKind::Synthetic => synthetic::run(&cfg, &queue, shutdown).await,
        SourceKind::Camera => camera::run(&cfg, &queue, shutdown).await,
        SourceKind::Genicam => genicam::run(&cfg, &queue, shutdown, triggers).await,
    };
    queue.close();
    result
}
