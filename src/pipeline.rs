//! The running daemon: source -> bounded frame queue (drop-oldest) -> detector -> sinks.
//!
//! This is the only module that knows more than one component. Shutdown follows the
//! mini-redis/vector pattern: only the source is told to stop; the detector loop ends when
//! the queue closes and drains, then the report channel closes and the MQTT sink flushes.

use std::collections::VecDeque;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::{mpsc, watch};

use crate::bundle::{self, Bundle};
use crate::config::{Config, TriggerMode, given};
use crate::detector::{Detector, Inspection, Precision};
use crate::drift::{DriftMonitor, DriftStatus};
use crate::metrics::Metrics;
use crate::queue::DropOldest;
use crate::review::{self, ReviewStore, Rule};
use crate::service;
use crate::sink::image_store::{ImageStore, Saved};
use crate::sink::outbox::Outbox;
use crate::sink::{self, Command, Latency, Message, ModelRef, Report};
use crate::source::{self, Frame};

/// Loads and checks the bundle exactly as `dskd verify` does, and its signature when
/// `detector.trusted_keys` lists keys; a bundle that fails is refused.
pub fn load_detector(cfg: &Config) -> Result<(Arc<Detector>, ModelRef)> {
    let dir = &cfg.detector.bundle;
    let trusted = crate::signing::trusted_keys(&cfg.detector.trusted_keys).context("detector.trusted_keys")?;
    let signed = if trusted.is_empty() { None } else { Some(crate::signing::verify(dir, &trusted)?) };
    let b = Bundle::open(dir).with_context(|| format!("opening bundle {}", dir.display()))?;
    let precision = if cfg.detector.int8 { Precision::Int8 } else { Precision::F32 };
    let det = Detector::load_with(&b, precision, &cfg.detector.engine())?;
    crate::verify::require_golden(&b, &det).with_context(|| format!("{}: golden parity", dir.display()))?;
    let model = ModelRef {
        name: b.manifest.bundle.name.clone(),
        version: b.manifest.bundle.version.clone(),
        sha256: bundle::sha256_file(&dir.join(bundle::MANIFEST))?,
        precision: format!("{precision:?}").to_lowercase(),
    };
    // The manifest that was opened must be the one whose signature was checked.
    if let Some(bytes) = signed
        && bundle::sha256_bytes(&bytes) != model.sha256
    {
        anyhow::bail!("{}: bundle.toml changed while it was being loaded; not loaded", dir.display());
    }
    Ok((Arc::new(det), model))
}

fn report(cfg: &Config, frame: &Frame, insp: &Inspection, model: &ModelRef, request_id: Option<String>) -> Report {
    let v = &insp.verdict;
    Report {
        id: uuid::Uuid::now_v7().to_string(),
        timestamp: sink::rfc3339(frame.captured),
        camera: cfg.camera.clone(),
        frame_seq: frame.seq,
        origin: frame.origin.clone(),
        verdict: if v.defect { "defect" } else { "ok" }.into(),
        score: v.score,
        threshold: v.threshold,
        severity: v.severity,
        regions: serde_json::to_value(&v.regions).expect("regions serialise"),
        model: model.clone(),
        latency_ms: Latency {
            frame_to_verdict: frame.read_at.elapsed().as_secs_f64() * 1e3,
            inference: insp.timings.total_ms,
        },
        request_id,
        image: None,
    }
}

/// The image store, shared with the blocking task that renders and writes each overlay.
type Images = Option<Arc<std::sync::Mutex<ImageStore>>>;

fn open_images(cfg: &Config) -> Result<Images> {
    let c = &cfg.images;
    let Some(dir) = given(&c.dir) else { return Ok(None) };
    let store = ImageStore::open(dir, c.max_bytes, c.max_per_minute, c.quality)
        .with_context(|| format!("images.dir {}", dir.display()))?;
    Ok(Some(Arc::new(std::sync::Mutex::new(store))))
}

/// Renders and stores the overlay of a defective frame when the store is on and its rate
/// limit allows. A failed write costs the image, never the event.
async fn store_overlay(
    images: &Images,
    id: &str,
    frame: &Frame,
    insp: &Inspection,
    metrics: &Metrics,
) -> Option<Saved> {
    let store = images.as_ref()?.clone();
    if !store.lock().expect("image store lock").admit(Instant::now()) {
        metrics.images_skipped.inc();
        return None;
    }
    let (img, insp, id) = (frame.image.clone(), insp.clone(), id.to_string());
    let saved = tokio::task::spawn_blocking(move || {
        let overlay = crate::overlay::render(&img, &insp.map, &insp.verdict);
        store.lock().expect("image store lock").save(&id, &overlay)
    })
    .await;
    match saved {
        Ok(Ok(saved)) => {
            metrics.images_written.inc();
            Some(saved)
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "overlay image not stored; the event goes out without it");
            metrics.images_skipped.inc();
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "overlay image task failed");
            metrics.images_skipped.inc();
            None
        }
    }
}

/// JPEG quality of the overlays the review queue renders itself.
const OVERLAY_QUALITY: u8 = 85;

/// The review queue and the rule that fills it, when `review.dir` is set.
type Review = Option<(Arc<std::sync::Mutex<ReviewStore>>, Rule)>;

fn open_review(cfg: &Config) -> Result<Review> {
    let c = &cfg.review;
    let Some(dir) = given(&c.dir) else { return Ok(None) };
    let store =
        ReviewStore::open(dir, c.max_items, c.max_bytes).with_context(|| format!("review.dir {}", dir.display()))?;
    tracing::info!(dir = %dir.display(), items = store.len(), "review queue open");
    Ok(Some((Arc::new(std::sync::Mutex::new(store)), Rule { band: c.band, defects: c.defects })))
}

/// Keeps the frame in the review queue when the rule says so, with the image store's overlay
/// when it made one (rendered here otherwise). A failed write costs the item, counted and
/// logged, never the event.
async fn keep_for_review(
    review: &Review,
    r: &Report,
    frame: &Frame,
    insp: &Inspection,
    stored: Option<&Saved>,
    metrics: &Metrics,
) {
    let Some((store, rule)) = review else { return };
    let Some(reason) = rule.reason(r.score, r.threshold, r.is_defect()) else { return };
    let item = review::Item {
        id: r.id.clone(),
        timestamp: r.timestamp.clone(),
        camera: r.camera.clone(),
        origin: r.origin.clone(),
        frame_seq: r.frame_seq,
        verdict: r.verdict.clone(),
        reason,
        score: r.score,
        threshold: r.threshold,
        model: format!("{} {}", r.model.name, r.model.version),
        map_width: insp.map.width,
        map_height: insp.map.height,
    };
    let (store, img, insp) = (store.clone(), frame.image.clone(), insp.clone());
    let stored = stored.map(|s| s.jpeg.clone());
    let saved = tokio::task::spawn_blocking(move || {
        let jpeg = match stored {
            Some(jpeg) => jpeg,
            None => crate::overlay::jpeg(&crate::overlay::render(&img, &insp.map, &insp.verdict), OVERLAY_QUALITY)
                .map_err(|e| review::ReviewError::Encode { what: "the overlay as JPEG", message: e.to_string() })?,
        };
        store.lock().expect("review store lock").save(&item, &img, &insp.map, &jpeg)
    })
    .await;
    match saved {
        Ok(Ok(saved)) => {
            metrics.review_kept.inc();
            metrics.review_evicted.inc_by(saved.evicted as u64);
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "review item not kept; the event goes out as usual");
            metrics.review_failures.inc();
        }
        Err(e) => {
            tracing::warn!(error = %e, "review task failed");
            metrics.review_failures.inc();
        }
    }
}

/// The reply to `cmd/review`: the queue's newest `limit` items, or why there are none.
async fn review_reply(
    cfg: &Config,
    limit: usize,
) -> (Option<String>, Option<serde_json::Map<String, serde_json::Value>>) {
    let Some(dir) = given(&cfg.review.dir).map(PathBuf::from) else {
        return (Some("the review queue is off (review.dir)".into()), None);
    };
    match review::list_blocking(dir, limit).await {
        Ok(items) => {
            let mut data = serde_json::Map::new();
            data.insert("items".into(), serde_json::to_value(items).expect("review items serialise"));
            (None, Some(data))
        }
        Err(e) => (Some(e), None),
    }
}

/// What the trigger mode says about the next frame.
struct Trigger {
    mode: TriggerMode,
    interval: Duration,
    last: Option<Instant>,
    /// Request ids of external triggers not yet served, oldest first.
    pending: VecDeque<String>,
}

impl Trigger {
    /// `Some(request_id)` when this frame is to be inspected.
    fn take(&mut self) -> Option<Option<String>> {
        match self.mode {
            TriggerMode::FreeRun => Some(None),
            TriggerMode::Interval => {
                let due = self.last.is_none_or(|t| t.elapsed() >= self.interval);
                due.then(|| {
                    self.last = Some(Instant::now());
                    None
                })
            }
            TriggerMode::External => self.pending.pop_front().map(Some),
        }
    }
}

fn broker_addr(cfg: &Config) -> Result<SocketAddr> {
    (cfg.mqtt.host.as_str(), cfg.mqtt.port)
        .to_socket_addrs()
        .with_context(|| format!("mqtt.host {}:{}", cfg.mqtt.host, cfg.mqtt.port))?
        .next()
        .with_context(|| format!("mqtt.host {} resolves to no address", cfg.mqtt.host))
}

/// Starts the MQTT sink (and the embedded broker if configured); returns its sender.
fn start_mqtt(
    cfg: &Config,
    model: &ModelRef,
    commands: mpsc::Sender<Command>,
    metrics: &Arc<Metrics>,
) -> Result<(mpsc::Sender<Message>, tokio::task::JoinHandle<()>)> {
    if cfg.mqtt.embedded_broker {
        sink::broker::start(broker_addr(cfg)?)?;
    }
    let outbox = Outbox::open(&cfg.outbox.path, cfg.outbox.max_events)?;
    let settings = sink::mqtt::Settings {
        host: cfg.mqtt.host.clone(),
        port: cfg.mqtt.port,
        client_id: if cfg.mqtt.client_id.is_empty() {
            format!("dskd-{}", cfg.camera)
        } else {
            cfg.mqtt.client_id.clone()
        },
        prefix: cfg.prefix(),
        keep_alive: Duration::from_secs(cfg.mqtt.keep_alive_s.max(1)),
        results: cfg.mqtt.results,
        backoff_initial: Duration::from_millis(cfg.mqtt.backoff_initial_ms.max(1)),
        backoff_max: Duration::from_millis(cfg.mqtt.backoff_max_ms.max(1)),
        status: serde_json::json!({"camera": cfg.camera, "model": model.name, "version": model.version, "sha256": model.sha256}),
        credentials: cfg.mqtt_password()?.map(|p| (cfg.mqtt.username.clone(), p)),
        max_packet_bytes: cfg.mqtt.max_packet_bytes,
        tls: tls_config(cfg)?,
        metrics: metrics.clone(),
    };
    let (tx, rx) = mpsc::channel(1024);
    let task = tokio::spawn(sink::mqtt::run(settings, outbox, rx, commands));
    Ok((tx, task))
}

/// The TLS client configuration when `mqtt.tls` is set; a bad file stops the start, named.
fn tls_config(cfg: &Config) -> Result<Option<Arc<rustls::ClientConfig>>> {
    if !cfg.mqtt.tls {
        return Ok(None);
    }
    let m = &cfg.mqtt;
    let client = given(&m.client_cert_file).zip(given(&m.client_key_file));
    let tls = sink::tls::client_config(given(&m.ca_file), client).context("mqtt TLS")?;
    Ok(Some(tls))
}

/// Frame-loop counters over one telemetry window.
#[derive(Default)]
struct Window {
    frames: u64,
    latencies: Vec<f64>,
    since: Option<Instant>,
}

impl Window {
    /// The telemetry JSON for this window, then starts a new one.
    fn take(
        &mut self,
        cfg: &Config,
        metrics: &Metrics,
        queue: &DropOldest<Frame>,
        drift: Option<&DriftStatus>,
    ) -> serde_json::Value {
        let secs = self.since.map_or(0.0, |t| t.elapsed().as_secs_f64());
        let p = sink::p50_p99(std::mem::take(&mut self.latencies));
        let v = serde_json::json!({
            "timestamp": sink::now_rfc3339(),
            "camera": cfg.camera,
            "fps": if secs > 0.0 { self.frames as f64 / secs } else { 0.0 },
            "inspected": metrics.frames_inspected.get(),
            "defects": metrics.defects.get(),
            "dropped_frames": queue.dropped(),
            "queue_depth": queue.len(),
            "latency_ms": {"p50": p.map(|p| p.0), "p99": p.map(|p| p.1)},
            "drift": drift,
        });
        *self = Window { since: Some(Instant::now()), ..Default::default() };
        v
    }
}

/// Binds `[http] listen` and serves metrics and health on it; None when off.
async fn start_http(cfg: &Config, metrics: &Arc<Metrics>) -> Result<Option<AbortOnDrop>> {
    if cfg.http.listen.is_empty() {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(&cfg.http.listen)
        .await
        .with_context(|| format!("http.listen {}: cannot bind", cfg.http.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics /healthz /readyz /review");
    let review = given(&cfg.review.dir).map(PathBuf::from);
    Ok(Some(AbortOnDrop(tokio::spawn(crate::metrics::serve(listener, metrics.clone(), review)))))
}

/// Stops the HTTP task when the pipeline returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where the configuration came from, so a reload can read it again.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    pub file: Option<PathBuf>,
    pub overrides: Vec<(String, String)>,
}

/// Signals from outside the pipeline: stop (SIGTERM) and reload (SIGHUP).
pub struct Controls {
    pub shutdown: watch::Receiver<bool>,
    pub reload: mpsc::Receiver<()>,
}

/// The model currently serving and the drift alarm against its normals; replaced whole by a
/// successful reload.
struct Serving {
    detector: Arc<Detector>,
    model: ModelRef,
    drift: Option<DriftMonitor>,
}

impl Serving {
    fn new(cfg: &Config, detector: Arc<Detector>, model: ModelRef) -> Self {
        let drift = drift_monitor(cfg, &detector);
        Self { detector, model, drift }
    }
}

/// The drift alarm for this bundle (its held-out normal scores at the precision served), or
/// None when off or when the bundle predates stored scores (said once).
fn drift_monitor(cfg: &Config, det: &Detector) -> Option<DriftMonitor> {
    if !cfg.drift.enabled {
        return None;
    }
    let c = &det.manifest().calibration;
    let int8 = cfg.detector.int8 && !c.int8_normal_scores.is_empty();
    let reference = if int8 { c.int8_normal_scores.clone() } else { c.normal_scores.clone() };
    let monitor = DriftMonitor::new(reference, cfg.drift.window, cfg.drift.alpha);
    if monitor.is_none() {
        tracing::warn!("drift alarm off: the bundle holds no normal scores (retrain or re-export it to enable)");
    }
    monitor
}

/// Feeds a verdict to the drift alarm; on a change, logs it and says it on MQTT.
async fn watch_drift(
    serving: &mut Serving,
    insp: &Inspection,
    cfg: &Config,
    metrics: &Metrics,
    mqtt: Option<&mpsc::Sender<Message>>,
) {
    let Some(monitor) = serving.drift.as_mut() else { return };
    let change = monitor.observe(insp.verdict.score);
    let status = monitor.status();
    if let Some(d) = status.statistic {
        metrics.drift_statistic.set(d);
    }
    let Some(change) = change else { return };
    let tripped = change == crate::drift::Change::Tripped;
    metrics.drift_alarm.set(tripped as i64);
    let (d, critical, shift) = (status.statistic.unwrap_or(0.0), status.critical, status.median_shift.unwrap_or(0.0));
    if tripped {
        tracing::warn!(
            statistic = d,
            critical,
            median_shift = shift,
            "score drift: frames no longer score like the calibration's normals"
        );
    } else {
        tracing::info!(statistic = d, critical, "score drift cleared");
    }
    if let Some(tx) = mqtt {
        let mut v = serde_json::to_value(status).expect("drift status serialises");
        v["timestamp"] = serde_json::json!(sink::now_rfc3339());
        v["camera"] = serde_json::json!(cfg.camera);
        let _ = tx.send(Message::Drift(v)).await;
    }
}

/// Re-reads config and bundle, validates (hashes, graphs, golden parity), then swaps. A bad
/// config or bundle changes nothing; the error says why. Only `[detector]` applies live.
async fn reload(source: &ConfigSource, serving: &mut Serving, notifier: &service::Notifier) -> Result<()> {
    notifier.notify("RELOADING=1");
    let src = source.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        let cfg = Config::load(src.file.as_deref(), &src.overrides)?;
        let (detector, model) = load_detector(&cfg)?;
        anyhow::Ok((cfg, detector, model))
    })
    .await?;
    notifier.notify("READY=1");
    let (cfg, detector, model) =
        loaded.inspect_err(|e| tracing::error!("reload refused, the old bundle keeps serving: {e:#}"))?;
    tracing::info!(model = %model.name, version = %model.version, "reloaded the bundle");
    *serving = Serving::new(&cfg, detector, model);
    Ok(())
}

/// Runs until the source ends or shutdown is signalled; in-flight frames are finished and the
/// outbox flushed before it returns.
pub async fn run(cfg: Config, source_of_cfg: ConfigSource, mut controls: Controls) -> Result<()> {
    let mut notifier = service::Notifier::from_env();
    let metrics = Arc::new(Metrics::default());
    let _http = start_http(&cfg, &metrics).await?;
    let (detector, model) = load_detector(&cfg)?;
    if cfg.detector.trusted_keys.is_empty() {
        tracing::warn!("detector.trusted_keys is empty: bundle signatures are not checked");
    } else {
        tracing::info!(keys = cfg.detector.trusted_keys.len(), "bundle signature checked");
    }
    let mut serving = Serving::new(&cfg, detector, model);
    let (cmd_tx, mut cmd_rx) = mpsc::channel(64);
    let mqtt = if cfg.mqtt.enabled { Some(start_mqtt(&cfg, &serving.model, cmd_tx, &metrics)?) } else { None };
    let images = open_images(&cfg)?;
    let review = open_review(&cfg)?;
    let queue = Arc::new(DropOldest::new(cfg.queue.capacity));
    let (fire, triggers) = mpsc::unbounded_channel();
    let source = tokio::spawn(source::run(cfg.source.clone(), queue.clone(), controls.shutdown.clone(), triggers));
    notifier.ready(&format!("serving {} {}", serving.model.name, serving.model.version));
    metrics.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut trigger = Trigger {
        mode: cfg.trigger.mode,
        interval: Duration::from_millis(cfg.trigger.interval_ms),
        last: None,
        pending: VecDeque::new(),
    };
    let mut threshold_override: Option<f32> = None;
    let started = Instant::now();
    let mut window = Window { since: Some(started), ..Default::default() };
    let every = Duration::from_secs(cfg.mqtt.telemetry_interval_s.max(1));
    let mut telemetry = tokio::time::interval_at((started + every).into(), every);
    loop {
        let frame = tokio::select! {
            f = queue.pop() => match f { Some(f) => f, None => break },
            _ = telemetry.tick(), if mqtt.is_some() && cfg.mqtt.telemetry_interval_s > 0 => {
                let drift = serving.drift.as_ref().map(|d| d.status());
                let t = window.take(&cfg, &metrics, &queue, drift);
                if let Some((tx, _)) = &mqtt {
                    let _ = tx.send(Message::Telemetry(t)).await;
                }
                continue;
            }
            Some(()) = controls.reload.recv() => {
                // A refusal is logged inside `reload`; there is no one else to tell.
                let _ = reload(&source_of_cfg, &mut serving, &notifier).await;
                continue;
            }
            Some(cmd) = cmd_rx.recv() => {
                match cmd {
                    Command::Trigger { request_id } => {
                        trigger.pending.push_back(request_id);
                        // A camera triggered by software takes its picture now.
                        let _ = fire.send(());
                    }
                    Command::Threshold { value, .. } => threshold_override = Some(value),
                    Command::Reload { request_id } => {
                        let result = reload(&source_of_cfg, &mut serving, &notifier).await;
                        let error = result.err().map(|e| format!("{e:#}"));
                        if let Some((tx, _)) = &mqtt {
                            let reply = Message::Reply { request_id, command: "reload".into(), error, data: None };
                            let _ = tx.send(reply).await;
                        }
                    }
                    Command::Review { request_id, limit } => {
                        let (error, data) = review_reply(&cfg, limit).await;
                        if let Some((tx, _)) = &mqtt {
                            let _ = tx.send(Message::Reply { request_id, command: "review".into(), error, data }).await;
                        }
                    }
                }
                continue;
            }
        };
        let Some(request_id) = trigger.take() else { continue };
        let det = serving.detector.clone();
        let img = frame.image.clone();
        let insp =
            match tokio::task::spawn_blocking(move || det.inspect_with_threshold(&img, threshold_override)).await? {
                Ok(i) => i,
                Err(e) => {
                    tracing::error!(frame = frame.seq, origin = %frame.origin, error = %e, "inspection failed");
                    continue;
                }
            };
        metrics.frames_inspected.inc();
        metrics.defects.inc_by(insp.verdict.defect as u64);
        metrics.inference_seconds.observe(insp.timings.total_ms / 1e3);
        metrics.frames_dropped.set(queue.dropped() as i64);
        metrics.queue_depth.set(queue.len() as i64);
        watch_drift(&mut serving, &insp, &cfg, &metrics, mqtt.as_ref().map(|(tx, _)| tx)).await;
        let mut r = report(&cfg, &frame, &insp, &serving.model, request_id);
        let saved = if r.is_defect() { store_overlay(&images, &r.id, &frame, &insp, &metrics).await } else { None };
        r.image = saved.as_ref().map(|s| s.path.display().to_string());
        keep_for_review(&review, &r, &frame, &insp, saved.as_ref(), &metrics).await;
        window.frames += 1;
        window.latencies.push(r.latency_ms.frame_to_verdict);
        if cfg.stdout.enabled {
            println!("{}", serde_json::to_string(&r)?);
        }
        if let Some((tx, _)) = &mqtt {
            let id = r.id.clone();
            let _ = tx.send(Message::Report(Box::new(r))).await;
            if let Some(saved) = saved.filter(|_| cfg.images.mqtt) {
                let _ = tx.send(Message::Image { id, jpeg: saved.jpeg }).await;
            }
        }
        notifier.frame_done(|| {
            let (inspected, defects) = (metrics.frames_inspected.get(), metrics.defects.get());
            format!("{inspected} frames inspected, {defects} defects, {} dropped", queue.dropped())
        });
    }
    notifier.notify("STOPPING=1");
    let (inspected, defects) = (metrics.frames_inspected.get(), metrics.defects.get());
    let fps = inspected as f64 / started.elapsed().as_secs_f64();
    tracing::info!(inspected, defects, dropped = queue.dropped(), fps, "frame loop finished");
    if let Some((tx, task)) = mqtt {
        drop(tx);
        task.await?;
    }
    source.await??;
    Ok(())
}
