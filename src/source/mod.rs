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

/// The reconnect loop of the camera sources: `session` opens the device and streams from it,
/// counting frames in its `seq`, and returns Ok on shutdown or a closed queue, or Err with why
/// the device failed. A failure is logged (`"{what} unavailable"`, with `retry_in_ms`) and the
/// device reopened after capped exponential back-off, which only frames reset: a device that
/// opens and then fails every read must not be reopened at the initial rate forever. Never
/// fails itself: a line camera that is unplugged and plugged back in needs no restart.
#[cfg(any(feature = "camera", feature = "genicam"))]
pub(crate) fn reopen_with_backoff(
    cfg: &SourceConfig,
    shutdown: &watch::Receiver<bool>,
    what: &str,
    mut session: impl FnMut(&mut u64) -> Result<(), String>,
) {
    let ms = Duration::from_millis;
    let mut backoff = crate::backoff::Backoff::new(ms(cfg.reconnect_initial_ms), ms(cfg.reconnect_max_ms));
    let mut seq = 0;
    while !*shutdown.borrow() {
        let before = seq;
        let failure = match session(&mut seq) {
            Ok(()) => return,
            Err(e) => e,
        };
        if seq > before {
            backoff.reset();
        }
        let wait = backoff.next_wait();
        tracing::warn!(device = %cfg.device, error = %failure, retry_in_ms = wait.as_millis() as u64, "{what} unavailable");
        if !wait_or_shutdown(wait, shutdown) {
            return;
        }
    }
}

/// Sleeps `wait` in short slices so shutdown is not held up; false once shutdown is set.
#[cfg(any(feature = "camera", feature = "genicam"))]
fn wait_or_shutdown(wait: Duration, shutdown: &watch::Receiver<bool>) -> bool {
    let until = Instant::now() + wait;
    while Instant::now() < until {
        if *shutdown.borrow() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50).min(wait));
    }
    !*shutdown.borrow()
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
