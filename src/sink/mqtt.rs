//! The MQTT sink (rumqttc), docs/ARCHITECTURE.md §5:
//! - `<prefix>/status`: retained JSON, `online` on every ConnAck, `offline` as the LWT and on
//!   clean shutdown;
//! - `<prefix>/events`: QoS 1, one JSON per defect, through the [`Outbox`];
//! - `<prefix>/results`: QoS 0, every verdict (optional);
//! - `<prefix>/telemetry`: QoS 0, every N s: fps, drops, queue depth, latency percentiles,
//!   outbox depth and drops;
//! - `<prefix>/drift`: QoS 1, retained: the score-drift alarm's state when it trips or clears;
//! - `<prefix>/cmd/{trigger,threshold,reload}` in, `<prefix>/cmd/reply` out; anything else under
//!   `cmd/` (or a malformed payload) gets an error reply and a log line, never a crash.
//!
//! Delivery: an event is in the outbox before it is published and leaves it on PUBACK.
//! rumqttc reports each outgoing publish's packet id in request order, so a FIFO of what we
//! asked to publish maps packet ids back to event ids. Reconnects use capped exponential
//! back-off (rumqttc has none) and a clean session, so after each ConnAck we re-subscribe and
//! replay every unsent event (duplicates are possible, always with the same id).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, SystemTime};

use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport,
};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::failure_log::{FailureLog, Line};
use super::outbox::{Outbox, Pending};
use super::{Command, Message, Report};
use crate::backoff::Backoff;

/// What the sink needs to know. Not `Debug`: it holds the broker password.
#[derive(Clone)]
pub struct Settings {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub prefix: String,
    pub keep_alive: Duration,
    pub results: bool,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// The `status` payload's fixed fields (camera, model, version).
    pub status: serde_json::Value,
    /// User name and password, if the broker wants them (never logged).
    pub credentials: Option<(String, String)>,
    /// Largest packet to send (see `mqtt.max_packet_bytes`).
    pub max_packet_bytes: usize,
    /// TLS client configuration, when the broker is reached over TLS.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

struct Sink {
    s: Settings,
    client: AsyncClient,
    outbox: Outbox,
    commands: mpsc::Sender<Command>,
    connected: bool,
    /// What we asked to publish, in order: the outbox id for events, None for the rest.
    issued: VecDeque<Option<String>>,
    /// Packet id -> event id, until PUBACK.
    inflight: HashMap<u16, String>,
    /// Event ids handed to the client and not yet acknowledged (issued or in flight).
    outstanding: HashSet<String>,
    /// The outbox replay under way: rows with `after < seq <= until` still to publish.
    replay: Option<Replay>,
    /// An event could not be queued while connected: the next replay pass picks it up.
    straggled: bool,
    /// Capture time of each event in flight, and frame-capture-to-PUBACK latencies (ms).
    captured: HashMap<String, SystemTime>,
    latencies: Vec<f64>,
    /// Events the outbox failed to store, and when to say so in the log.
    outbox_failures: FailureLog,
    /// The drift alarm's state from its last trip or clear (`None` before either).
    drift: Option<String>,
}

/// The outbox replay's cursor (see [`Sink::replay_more`]).
#[derive(Debug, Clone, Copy)]
struct Replay {
    after: i64,
    until: i64,
}

/// Events a replay keeps outstanding at most: the client's queue (1024) must keep room for
/// live events, telemetry and replies, or they are refused.
const REPLAY_WINDOW: usize = 256;

/// Summaries of a repeating outbox failure at most this often.
const OUTBOX_LOG_EVERY: Duration = Duration::from_secs(60);

/// The retained status payload; `outbox_failures` says whether events are being made durable.
fn status(
    s: &Settings,
    state: &str,
    outbox_failures: &FailureLog,
    outbox_dropped: u64,
    drift: Option<&str>,
) -> Vec<u8> {
    let mut v = s.status.clone();
    v["state"] = json!(state);
    v["timestamp"] = json!(crate::sink::now_rfc3339());
    v["outbox_writable"] = json!(!outbox_failures.failing());
    v["outbox_write_failures"] = json!(outbox_failures.total());
    v["outbox_dropped"] = json!(outbox_dropped);
    v["drift"] = json!(drift);
    v.to_string().into_bytes()
}

impl Sink {
    /// Queues a message; true when the client took it. An event the client refuses stays in
    /// the outbox and a later replay pass sends it.
    fn publish(&mut self, topic: String, qos: QoS, retain: bool, payload: Vec<u8>, event: Option<String>) -> bool {
        // Nothing is queued while disconnected: rumqttc would send it after the reconnect,
        // next to the outbox replay (events) or long out of date (telemetry, replies).
        if !self.connected {
            return false;
        }
        // rumqttc treats an oversized packet as a connection error: every message in flight
        // would be resent after the reconnect. Refuse it here instead (fixed header, topic
        // length and packet id make up the rest of the packet).
        let size = payload.len() + topic.len() + 16;
        if size > self.s.max_packet_bytes {
            tracing::warn!(%topic, size, max = self.s.max_packet_bytes, "mqtt message too large, not sent");
            return false;
        }
        match self.client.try_publish(topic, qos, retain, payload) {
            Ok(()) => {
                if let Some(id) = &event {
                    self.outstanding.insert(id.clone());
                }
                self.issued.push_back(event);
                true
            }
            Err(e) => {
                // The event stays in the outbox; a replay pass sends it.
                tracing::warn!(error = %e, "mqtt publish not queued");
                self.straggled |= event.is_some();
                false
            }
        }
    }

    /// Publishes the next page of the outbox replay while fewer than [`REPLAY_WINDOW`] events
    /// are outstanding; called at connect and on every PUBACK. Rows stored after the replay
    /// began went out live, so a pass covers only the rows that were there when it started;
    /// events refused by a full client queue meanwhile start another pass when it ends.
    fn replay_more(&mut self) {
        while self.connected {
            let Some(r) = self.replay else {
                if !std::mem::take(&mut self.straggled) {
                    return;
                }
                let until = self.outbox.last_seq().unwrap_or(0);
                self.replay = Some(Replay { after: 0, until });
                continue;
            };
            let room = REPLAY_WINDOW.saturating_sub(self.outstanding.len());
            if room == 0 {
                return;
            }
            let page = match self.outbox.unsent_page(r.after, r.until, room) {
                Ok(page) => page,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the outbox");
                    return;
                }
            };
            if page.is_empty() {
                self.replay = None;
                continue;
            }
            for (seq, p) in page {
                if !self.outstanding.contains(&p.id)
                    && !self.publish(p.topic, QoS::AtLeastOnce, false, p.payload, Some(p.id))
                {
                    return;
                }
                self.replay = Some(Replay { after: seq, until: r.until });
            }
        }
    }

    fn on_report(&mut self, r: &Report) {
        let payload = serde_json::to_vec(r).expect("report serialises");
        if r.is_defect() {
            let p = Pending { id: r.id.clone(), topic: format!("{}/events", self.s.prefix), payload: payload.clone() };
            if let Ok(t) = time::OffsetDateTime::parse(&r.timestamp, &time::format_description::well_known::Rfc3339) {
                self.captured.insert(r.id.clone(), t.into());
            }
            self.store(&p);
            self.publish(p.topic, QoS::AtLeastOnce, false, p.payload, Some(p.id));
        }
        if self.s.results {
            self.publish(format!("{}/results", self.s.prefix), QoS::AtMostOnce, false, payload, None);
        }
    }

    /// Puts an event in the outbox. A failure (a full disk) costs durability, not the event:
    /// it is still published live. Counted, logged without flooding, and said in the retained
    /// status when it starts and when it ends.
    fn store(&mut self, p: &Pending) {
        let (was_failing, id) = (self.outbox_failures.failing(), &p.id);
        let line = match self.outbox.insert(p) {
            Ok(()) => self.outbox_failures.succeeded(),
            Err(e) => {
                self.s.metrics.outbox_write_failures.inc();
                self.outbox_failures.failed(std::time::Instant::now(), e.to_string())
            }
        };
        match line {
            Some(Line::First { error }) => {
                tracing::error!(%error, %id, "event not stored in the outbox; publishing it live (not durable)")
            }
            Some(Line::Summary { failures, over, error }) => tracing::error!(
                failures,
                over_s = over.as_secs(),
                total = self.outbox_failures.total(),
                %error,
                "events still not stored in the outbox; publishing them live (not durable)"
            ),
            Some(Line::Recovered { failures }) => tracing::info!(failures, "outbox stores events again"),
            None => {}
        }
        if was_failing != self.outbox_failures.failing() {
            self.publish_status("online");
        }
    }

    fn publish_status(&mut self, state: &str) {
        let payload = status(&self.s, state, &self.outbox_failures, self.outbox.dropped(), self.drift.as_deref());
        self.publish(format!("{}/status", self.s.prefix), QoS::AtLeastOnce, true, payload, None);
    }

    fn on_connack(&mut self) {
        self.connected = true;
        self.s.metrics.mqtt_connected.set(1);
        self.inflight.clear();
        self.outstanding.clear();
        tracing::info!(host = %self.s.host, port = self.s.port, "mqtt connected");
        // Subscribe first: a broker handles one connection's packets in order, so a client that
        // sees `online` can send a command at once and it is not lost.
        if let Err(e) = self.client.try_subscribe(format!("{}/cmd/+", self.s.prefix), QoS::AtLeastOnce) {
            tracing::warn!(error = %e, "mqtt subscribe not queued");
        }
        self.publish_status("online");
        match (self.outbox.last_seq(), self.outbox.len()) {
            (Ok(until), Ok(pending)) => {
                if pending > 0 {
                    tracing::info!(events = pending, "replaying the outbox");
                }
                self.straggled = false;
                self.replay = Some(Replay { after: 0, until });
                self.replay_more();
            }
            (Err(e), _) | (_, Err(e)) => tracing::error!(error = %e, "cannot read the outbox"),
        }
    }

    fn reply(
        &mut self,
        request_id: Option<String>,
        command: &str,
        error: Option<String>,
        data: Option<serde_json::Map<String, serde_json::Value>>,
    ) {
        let mut body = json!({"request_id": request_id, "command": command, "ok": error.is_none(), "error": error});
        body.as_object_mut().expect("a reply is an object").extend(data.unwrap_or_default());
        self.publish(
            format!("{}/cmd/reply", self.s.prefix),
            QoS::AtLeastOnce,
            false,
            body.to_string().into_bytes(),
            None,
        );
    }

    async fn on_command(&mut self, topic: &str, payload: &[u8]) {
        let name = topic.rsplit('/').next().unwrap_or_default().to_string();
        if name == "reply" {
            return;
        }
        match parse_command(&name, payload) {
            Ok(cmd) => {
                let id = cmd.request_id().to_string();
                let accepted = self.commands.send(cmd).await.is_ok();
                // A trigger's answer is its result and a reload's comes from the pipeline
                // once it is done; a threshold change is answered here.
                if name == "threshold" || !accepted {
                    self.reply(Some(id), &name, (!accepted).then(|| "daemon is shutting down".into()), None);
                }
            }
            Err(r) => {
                tracing::warn!(%topic, reason = r.reason.label(), error = %r.message, "command refused");
                self.s.metrics.commands_rejected.get_or_create(&[("reason", r.reason.label())]).inc();
                self.reply(r.request_id, &name, Some(r.message), None);
            }
        }
    }
}

/// Largest command payload read; a bigger one is refused unread (commands are a few dozen
/// bytes of JSON).
pub const COMMAND_MAX_BYTES: usize = 64 << 10;

/// MQTT's own packet size limit (the Remaining Length field's maximum). Incoming packets up to
/// this size are read whole, so an oversized command costs that message, not the connection:
/// MQTT 3.1.1 has no way to ask the broker to hold bigger ones back, and a client that refuses
/// a packet must drop the connection (and the commands and acknowledgements behind it).
const MQTT_MAX_PACKET: usize = 268_435_455;

/// Why a command was refused: the `reason` label of `dskd_commands_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    TooLarge,
    NotJson,
    NoRequestId,
    BadValue,
    UnknownCommand,
}

impl RejectReason {
    pub fn label(self) -> &'static str {
        match self {
            RejectReason::TooLarge => "too_large",
            RejectReason::NotJson => "not_json",
            RejectReason::NoRequestId => "no_request_id",
            RejectReason::BadValue => "bad_value",
            RejectReason::UnknownCommand => "unknown_command",
        }
    }
}

/// A refused command: why, what to tell the sender, and its request id if one could be read
/// (so the reply can carry it).
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub reason: RejectReason,
    pub message: String,
    pub request_id: Option<String>,
}

/// Parses `cmd/<name>` payloads: `{"request_id": "...", ...}`.
pub fn parse_command(name: &str, payload: &[u8]) -> Result<Command, Rejected> {
    let reject = |reason, message: String, request_id: Option<String>| Rejected { reason, message, request_id };
    if payload.len() > COMMAND_MAX_BYTES {
        let message = format!("payload of {} bytes is over the {COMMAND_MAX_BYTES}-byte limit", payload.len());
        return Err(reject(RejectReason::TooLarge, message, None));
    }
    let v: serde_json::Value = serde_json::from_slice(payload)
        .map_err(|e| reject(RejectReason::NotJson, format!("payload is not JSON: {e}"), None))?;
    let request_id = v.get("request_id").and_then(|r| r.as_str()).map(str::to_string);
    let Some(id) = request_id.clone() else {
        return Err(reject(RejectReason::NoRequestId, "missing string field `request_id`".into(), None));
    };
    match name {
        "trigger" => Ok(Command::Trigger { request_id: id }),
        "reload" => Ok(Command::Reload { request_id: id }),
        "review" => match v.get("limit") {
            None => Ok(Command::Review { request_id: id, limit: crate::review::LIST_LIMIT }),
            Some(l) => match l.as_u64() {
                Some(n) if n >= 1 => Ok(Command::Review { request_id: id, limit: n as usize }),
                _ => Err(reject(RejectReason::BadValue, "`limit` must be a whole number from 1".into(), request_id)),
            },
        },
        "threshold" => match v.get("threshold").and_then(|t| t.as_f64()) {
            Some(t) if t.is_finite() && t > 0.0 => Ok(Command::Threshold { request_id: id, value: t as f32 }),
            _ => Err(reject(RejectReason::BadValue, "`threshold` must be a positive number".into(), request_id)),
        },
        other => Err(reject(
            RejectReason::UnknownCommand,
            format!("unknown command `{other}` (trigger, threshold, reload, review)"),
            request_id,
        )),
    }
}

/// Runs until `reports` closes, then publishes `offline` and waits (briefly) for PUBACKs.
pub async fn run(s: Settings, outbox: Outbox, mut reports: mpsc::Receiver<Message>, commands: mpsc::Sender<Command>) {
    let mut opts = MqttOptions::new(s.client_id.clone(), s.host.clone(), s.port);
    opts.set_keep_alive(s.keep_alive);
    // Incoming: anything MQTT allows, so an oversized command is read and refused rather
    // than cutting the connection (see MQTT_MAX_PACKET). Outgoing: room for overlay images.
    opts.set_max_packet_size(MQTT_MAX_PACKET, s.max_packet_bytes);
    opts.set_clean_session(true);
    if let Some((user, password)) = &s.credentials {
        opts.set_credentials(user.clone(), password.clone());
    }
    if let Some(tls) = &s.tls {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls.clone())));
    }
    let outbox_failures = FailureLog::new(OUTBOX_LOG_EVERY);
    let will = status(&s, "offline", &outbox_failures, outbox.dropped(), None);
    opts.set_last_will(LastWill::new(format!("{}/status", s.prefix), will, QoS::AtLeastOnce, true));
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    let mut sink = Sink {
        s,
        client,
        outbox,
        commands,
        connected: false,
        issued: VecDeque::new(),
        inflight: HashMap::new(),
        outstanding: HashSet::new(),
        replay: None,
        straggled: false,
        captured: HashMap::new(),
        latencies: Vec::new(),
        outbox_failures,
        drift: None,
    };
    let mut backoff = Backoff::new(sink.s.backoff_initial, sink.s.backoff_max);
    let mut retry_at: Option<Instant> = None;
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            r = reports.recv() => match r {
                Some(Message::Report(r)) => {
                    sink.on_report(&r);
                    sink.s.metrics.outbox_pending.set(sink.outbox.len().unwrap_or(0) as i64);
                    sink.s.metrics.outbox_dropped.set(sink.outbox.dropped() as i64);
                }
                Some(Message::Telemetry(mut t)) => {
                    t["outbox_pending"] = json!(sink.outbox.len().unwrap_or(0));
                    t["outbox_dropped"] = json!(sink.outbox.dropped());
                    t["outbox_write_failures"] = json!(sink.outbox_failures.total());
                    t["mqtt_connected"] = json!(sink.connected);
                    let topic = format!("{}/telemetry", sink.s.prefix);
                    sink.publish(topic, QoS::AtMostOnce, false, t.to_string().into_bytes(), None);
                }
                Some(Message::Image { id, jpeg }) => {
                    // Best effort (QoS 0, not in the outbox): the event, which names the image
                    // file, is what must not be lost.
                    let topic = format!("{}/events/{id}/image", sink.s.prefix);
                    sink.publish(topic, QoS::AtMostOnce, false, jpeg, None);
                }
                Some(Message::Drift(d)) => {
                    // Retained and QoS 1: a dashboard that connects later sees the current state.
                    let topic = format!("{}/drift", sink.s.prefix);
                    sink.publish(topic, QoS::AtLeastOnce, true, d.to_string().into_bytes(), None);
                    // The retained status says it too, for whoever reads only that.
                    sink.drift = d["state"].as_str().map(String::from);
                    sink.publish_status("online");
                }
                Some(Message::Reply { request_id, command, error, data }) => {
                    sink.reply(Some(request_id), &command, error, data)
                }
                None => break,
            },
            ev = eventloop.poll(), if retry_at.is_none() => match ev {
                Ok(ev) => {
                    if matches!(ev, Event::Incoming(Packet::ConnAck(_))) {
                        backoff.reset();
                        last_error = None;
                    }
                    handle(&mut sink, ev).await;
                }
                Err(e) => {
                    let wait = backoff.next_wait();
                    let error = e.to_string();
                    if sink.connected {
                        tracing::warn!(%error, "mqtt connection lost");
                    } else if last_error.as_deref() != Some(error.as_str()) {
                        // Each new reason once at warn (a wrong CA or password must be seen);
                        // the same reason again only at debug, so an outage does not flood.
                        tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "mqtt connect failed");
                    } else {
                        tracing::debug!(%error, retry_in_ms = wait.as_millis() as u64, "mqtt connect failed");
                    }
                    last_error = Some(error);
                    sink.connected = false;
                    sink.s.metrics.mqtt_connected.set(0);
                    retry_at = Some(Instant::now() + wait);
                }
            },
            _ = sleep_until(retry_at), if retry_at.is_some() => retry_at = None,
        }
    }
    shutdown(sink, &mut eventloop).await;
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

async fn handle(sink: &mut Sink, ev: Event) {
    match ev {
        Event::Incoming(Packet::ConnAck(_)) => sink.on_connack(),
        Event::Incoming(Packet::PubAck(ack)) => {
            if let Some(id) = sink.inflight.remove(&ack.pkid) {
                sink.s.metrics.events_delivered.inc();
                if let Some(t) = sink.captured.remove(&id)
                    && let Ok(d) = t.elapsed()
                    && sink.latencies.len() < 100_000
                {
                    sink.latencies.push(d.as_secs_f64() * 1e3);
                }
                if let Err(e) = sink.outbox.mark_sent(&id) {
                    tracing::error!(error = %e, %id, "cannot mark event sent");
                }
                sink.outstanding.remove(&id);
                sink.replay_more();
            }
        }
        Event::Incoming(Packet::Publish(p)) => sink.on_command(&p.topic, &p.payload).await,
        Event::Outgoing(Outgoing::Publish(pkid)) => {
            if let Some(Some(id)) = sink.issued.pop_front() {
                sink.inflight.insert(pkid, id);
            }
        }
        _ => {}
    }
}

/// Clean shutdown: `offline` status, up to 3 s for outstanding PUBACKs, disconnect.
async fn shutdown(mut sink: Sink, eventloop: &mut EventLoop) {
    let report = |sink: &Sink| {
        if let Some((p50, p99)) = super::p50_p99(sink.latencies.clone()) {
            let n = sink.latencies.len();
            tracing::info!(events = n, p50_ms = p50, p99_ms = p99, "frame capture to PUBACK latency");
        }
    };
    if !sink.connected {
        report(&sink);
        return;
    }
    sink.publish_status("offline");
    let deadline = Instant::now() + Duration::from_secs(3);
    while (!sink.inflight.is_empty() || !sink.issued.is_empty()) && Instant::now() < deadline {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(ev)) => handle(&mut sink, ev).await,
            _ => break,
        }
    }
    report(&sink);
    let _ = sink.client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
}
