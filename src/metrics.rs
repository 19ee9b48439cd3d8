//! Prometheus metrics (`dskd_*`, base units) and the small HTTP endpoint that serves them with
//! `/healthz` (the process answers) and `/readyz` (the bundle is loaded and events have a way
//! out: the broker is connected, or the outbox is taking them while it is down).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
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
    pub mqtt_connected: Gauge,
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
            mqtt_connected: Gauge::default(),
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
        registry.register("mqtt_connected", "1 while connected to the broker", m.mqtt_connected.clone());
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
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = stream.read(&mut buf).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = match path {
                "/metrics" => ("200 OK", metrics.render()),
                "/healthz" => ("200 OK", "ok\n".to_string()),
                "/readyz" if metrics.is_ready() => ("200 OK", "ready\n".to_string()),
                "/readyz" => ("503 Service Unavailable", "not ready\n".to_string()),
                _ => ("404 Not Found", "not found\n".to_string()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
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
}
