//! Prometheus metrics (`dskd_*`, base units) and the small HTTP endpoint that serves them with
//! `/healthz` (the process answers) and `/readyz` (the bundle is loaded and events have a way
//! out: the broker is connected, or the outbox is taking them while it is down), and
//! `/review` (the review queue's items as JSON, when it is on).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every metric the daemon exports; shared by the pipeline and the MQTT sink.
pub struct Metrics {
    registry: Registry,
    pub frames_inspected: Counter,
    pub defects: Counter,
    pub frames_dropped: Gauge,
    pub queue_depth: Gauge,
    pub inference_seconds: Histogram,
    pub events_delivered: Counter,
    pub outbox_pending: Gauge,
    pub outbox_dropped: Gauge,
    pub outbox_write_failures: Counter,
    pub mqtt_connected: Gauge,
    /// The drift alarm's last KS distance, and 1 while it is tripped.
    pub drift_statistic: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub drift_alarm: Gauge,
    pub images_written: Counter,
    pub images_skipped: Counter,
    /// Review queue: items kept, deleted to stay in bounds, and lost to a failed write.
    pub review_kept: Counter,
    pub review_evicted: Counter,
    pub review_failures: Counter,
    /// MQTT commands refused, by `reason` (see `sink::mqtt::Rejected`).
    pub commands_rejected: Family<[(&'static str, &'static str); 1], Counter>,
    /// Set once the bundle is loaded and the sinks are started.
    pub ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("dskd");
        let m = Metrics {
            frames_inspected: Counter::default(),
            defects: Counter::default(),
            frames_dropped: Gauge::default(),
            queue_depth: Gauge::default(),
            inference_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            events_delivered: Counter::default(),
            outbox_pending: Gauge::default(),
            outbox_dropped: Gauge::default(),
            outbox_write_failures: Counter::default(),
            mqtt_connected: Gauge::default(),
            drift_statistic: Gauge::default(),
            drift_alarm: Gauge::default(),
            images_written: Counter::default(),
            images_skipped: Counter::default(),
            review_kept: Counter::default(),
            review_evicted: Counter::default(),
            review_failures: Counter::default(),
            commands_rejected: Family::default(),
            ready: AtomicBool::new(false),
            registry: Registry::default(),
        };
        registry.register("frames_inspected", "Frames run through the detector", m.frames_inspected.clone());
        registry.register("defects", "Frames judged defective", m.defects.clone());
        registry.register("frames_dropped", "Frames dropped by the full queue since start", m.frames_dropped.clone());
        registry.register("queue_depth", "Frames waiting for the detector", m.queue_depth.clone());
        registry.register("inference_seconds", "Preprocess to verdict, per frame", m.inference_seconds.clone());
        registry.register("events_delivered", "Defect events acknowledged by the broker", m.events_delivered.clone());
        registry.register("outbox_pending", "Events waiting in the outbox", m.outbox_pending.clone());
        registry.register("outbox_dropped", "Events dropped by the full outbox since start", m.outbox_dropped.clone());
        registry.register(
            "outbox_write_failures",
            "Events the outbox could not store (full disk): published live but not durable",
            m.outbox_write_failures.clone(),
        );
        registry.register(
            "drift_statistic",
            "KS distance between recent normal scores and the bundle's held-out normals",
            m.drift_statistic.clone(),
        );
        registry.register("drift_alarm", "1 while the score-drift alarm is tripped", m.drift_alarm.clone());
        registry.register("mqtt_connected", "1 while connected to the broker", m.mqtt_connected.clone());
        registry.register("images_written", "Overlay JPEGs written to the image store", m.images_written.clone());
        registry.register(
            "images_skipped",
            "Defects without an overlay image (rate limit or a failed write)",
            m.images_skipped.clone(),
        );
        registry.register("review_kept", "Frames kept in the review queue", m.review_kept.clone());
        registry.register("review_evicted", "Review items deleted to stay in bounds", m.review_evicted.clone());
        registry.register("review_failures", "Review items lost to a failed write", m.review_failures.clone());
        registry.register(
            "commands_rejected",
            "MQTT commands refused (each answered on cmd/reply), by reason",
            m.commands_rejected.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the task is dropped.
/// Reads up to the blank line that ends an HTTP request head. A request can arrive in several
/// TCP segments; answering after the first would cut off a client still writing. Bounded in
/// size and time so a stuck or hostile client costs nothing.
async fn read_request_head(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Some(())
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), read).await.ok()??;
    Some(String::from_utf8_lossy(&head).into_owned())
}

pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, review: Option<PathBuf>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let (metrics, review) = (metrics.clone(), review.clone());
        tokio::spawn(async move {
            let Some(request) = read_request_head(&mut stream).await else { return };
            let target = request.split_whitespace().nth(1).unwrap_or("/");
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            const TEXT: &str = "text/plain; version=0.0.4";
            let (status, kind, body) = match path {
                "/metrics" => ("200 OK", TEXT, metrics.render()),
                "/healthz" => ("200 OK", TEXT, "ok\n".to_string()),
                "/readyz" if metrics.is_ready() => ("200 OK", TEXT, "ready\n".to_string()),
                "/readyz" => ("503 Service Unavailable", TEXT, "not ready\n".to_string()),
                "/review" => review_page(review, query).await,
                _ => ("404 Not Found", TEXT, "not found\n".to_string()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

/// `GET /review[?limit=N]`: the review queue's items, newest first (100 unless asked), as
/// `{"items": [...]}`.
async fn review_page(dir: Option<PathBuf>, query: &str) -> (&'static str, &'static str, String) {
    const JSON: &str = "application/json";
    let Some(dir) = dir else {
        return ("404 Not Found", JSON, r#"{"error":"the review queue is off (review.dir)"}"#.into());
    };
    let limit = query.split('&').find_map(|kv| kv.strip_prefix("limit=")).map(str::parse::<usize>);
    let limit = match limit {
        None => crate::review::LIST_LIMIT,
        Some(Ok(n)) => n,
        Some(Err(_)) => return ("400 Bad Request", JSON, r#"{"error":"limit must be a whole number"}"#.into()),
    };
    match crate::review::list_blocking(dir, limit).await {
        Ok(items) => ("200 OK", JSON, serde_json::json!({ "items": items }).to_string()),
        Err(e) => ("500 Internal Server Error", JSON, serde_json::json!({ "error": e }).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_the_dskd_prefix_and_base_units() {
        let m = Metrics::default();
        m.frames_inspected.inc();
        m.inference_seconds.observe(0.07);
        let text = m.render();
        assert!(text.contains("dskd_frames_inspected_total 1"), "{text}");
        assert!(text.contains("dskd_inference_seconds_bucket"), "{text}");
    }

    /// A request head split over several writes is answered once whole (an answer after the
    /// first segment would reset a client still writing).
    #[tokio::test]
    async fn a_request_in_pieces_is_answered_whole() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, Arc::new(Metrics::default()), None));
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        for piece in ["GET /hea", "lthz HTTP/1.1\r\nHost: x\r\n", "\r\n"] {
            c.write_all(piece.as_bytes()).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        }
        let mut answer = String::new();
        c.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("ok\n"), "{answer}");
    }
}
