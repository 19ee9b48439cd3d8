//! Typed daemon configuration: defaults < file < `DSKD_SECTION__KEY` environment < CLI.
//!
//! Every section denies unknown keys, so a typo is an error that names the key and the file
//! instead of a silently ignored setting. `config/dskd.toml` documents every key.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::detector::Layout;
pub use crate::source::pixels::PixelFormat;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Camera / line position name; used in topics (`dskd/<camera>`) and events.
    pub camera: String,
    pub source: SourceConfig,
    pub trigger: TriggerConfig,
    pub detector: DetectorConfig,
    pub queue: QueueConfig,
    pub mqtt: MqttConfig,
    pub outbox: OutboxConfig,
    pub stdout: StdoutConfig,
    pub http: HttpConfig,
    pub images: ImagesConfig,
    pub drift: DriftConfig,
    pub review: ReviewConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReviewConfig {
    /// Folder of the review queue (`src/review.rs`; empty = off).
    pub dir: PathBuf,
    /// Keep the frames scoring within `[low, high]` times the image threshold.
    pub band: [f32; 2],
    /// Keep every defect too.
    pub defects: bool,
    /// Bounds: beyond either, the oldest items are deleted.
    pub max_items: usize,
    pub max_bytes: u64,
}

impl Default for ReviewConfig {
    fn default() -> Self {
        Self { dir: PathBuf::new(), band: [0.8, 1.0], defects: true, max_items: 1000, max_bytes: 1 << 30 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    /// Compare the frames' scores with the bundle's held-out normals and raise
    /// `dskd/<camera>/drift` when they part (`src/drift.rs`).
    pub enabled: bool,
    /// Live scores compared (the last this many frames).
    pub window: usize,
    /// False-alarm probability of each check (one per window/4 frames).
    pub alpha: f64,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self { enabled: true, window: 200, alpha: 1e-4 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ImagesConfig {
    /// Folder for overlay JPEGs of defective frames (empty = no images).
    pub dir: PathBuf,
    /// At most this many images per minute; later defects in the minute go out without one.
    pub max_per_minute: usize,
    /// Disk budget: beyond it the oldest images are deleted.
    pub max_bytes: u64,
    /// JPEG quality, 1-100.
    pub quality: u8,
    /// Also publish each stored image on `<prefix>/events/<id>/image` (binary JPEG, QoS 0).
    pub mqtt: bool,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        Self { dir: PathBuf::new(), max_per_minute: 12, max_bytes: 512 << 20, quality: 85, mqtt: false }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of `/metrics`, `/healthz`, `/readyz` (empty = off; port 0 = any free port).
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { listen: "127.0.0.1:9464".into() }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Replay image files from a folder.
    Dir,
    /// Read a stream of JPEG or PNM frames from a command's stdout.
    Pipe,
    /// Procedural surface images (`dskd synth`), a defect every `defect_every` frames.
    Synthetic,
    /// An industrial or UVC camera (V4L2 on Linux, through nokhwa; cargo feature `camera`).
    Camera,
    /// A GigE Vision or USB3 Vision camera (GenICam, through aravis; cargo feature `genicam`).
    Genicam,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    pub kind: SourceKind,
    /// `dir`: the folder to replay.
    pub path: PathBuf,
    /// `dir`: start again at the first file after the last.
    pub r#loop: bool,
    /// Frames per second a `dir` or `synthetic` source produces (0 = as fast as possible).
    pub rate_hz: f64,
    /// `pipe`: the command (run by `sh -c`) whose stdout carries the frames.
    pub command: String,
    /// `synthetic`: image size in pixels.
    pub size: u32,
    /// `synthetic`: every N-th frame carries a defect (0 = never).
    pub defect_every: u64,
    /// `synthetic`: stop after this many frames (0 = never).
    pub frames: u64,
    /// `synthetic`: from this frame on (0 = never), the scene changes as a knocked camera or
    /// new lighting would: `shift_brightness` gray levels added, `shift_noise` the amplitude
    /// of added pixel noise (for testing the drift alarm).
    pub shift_after: u64,
    pub shift_brightness: f32,
    pub shift_noise: f32,
    /// `camera`: an index ("0"), a device path ("/dev/video2") or (part of) the camera's name.
    pub device: String,
    /// `camera`: wanted resolution (0 = the camera's largest) and frame rate (0 = its fastest);
    /// the closest mode the camera offers is taken, and logged.
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// `camera`: pixel formats accepted, most preferred first.
    pub pixel_formats: Vec<PixelFormat>,
    /// `camera`: convert frames to gray (cheaper; the model sees gray as three equal channels).
    pub gray: bool,
    /// `camera`, `genicam`: reconnect back-off when the device fails or goes away: first wait
    /// and cap.
    pub reconnect_initial_ms: u64,
    pub reconnect_max_ms: u64,
    /// `genicam`: sensor region `[x, y, width, height]` (absent: as the camera is set).
    pub roi: Option<[u32; 4]>,
    /// `genicam`: ExposureTime in microseconds and Gain in dB (absent: as the camera is set).
    pub exposure_us: Option<f64>,
    pub gain_db: Option<f64>,
    /// `genicam`: frame trigger source: empty = free-running (at `fps` when not 0),
    /// `Software` = one frame per `cmd/trigger`, or a line (`Line1`, ...) wired to the PLC.
    pub trigger_source: String,
    /// `genicam`: the line edge that triggers (`RisingEdge`, `FallingEdge`, ...).
    pub trigger_activation: String,
    /// `genicam`: GigE packet size in bytes (0 = negotiated with the camera; see the README).
    pub packet_size: u32,
    /// `genicam`: GigE: ask the camera to resend lost packets (aravis's default), or drop the
    /// frame at once (for links where a late frame is worse than none).
    pub packet_resend: bool,
    /// `genicam`: a free-running camera silent this long is reopened.
    pub stall_ms: u64,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            kind: SourceKind::Synthetic,
            path: PathBuf::new(),
            r#loop: false,
            rate_hz: 5.0,
            command: String::new(),
            size: 256,
            defect_every: 5,
            frames: 0,
            shift_after: 0,
            shift_brightness: 0.0,
            shift_noise: 0.0,
            device: "0".into(),
            width: 640,
            height: 480,
            fps: 0,
            pixel_formats: vec![PixelFormat::Mjpeg, PixelFormat::Yuyv, PixelFormat::Gray, PixelFormat::Nv12],
            gray: false,
            reconnect_initial_ms: 500,
            reconnect_max_ms: 30_000,
            roi: None,
            exposure_us: None,
            gain_db: None,
            trigger_source: String::new(),
            trigger_activation: "RisingEdge".into(),
            packet_size: 0,
            packet_resend: true,
            stall_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TriggerMode {
    /// Inspect every frame (drop-oldest when inference is slower than the source).
    FreeRun,
    /// Inspect at most one frame per `interval_ms`.
    Interval,
    /// Inspect the next frame after each `<prefix>/cmd/trigger` command.
    External,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TriggerConfig {
    pub mode: TriggerMode,
    pub interval_ms: u64,
}

impl Default for TriggerConfig {
    fn default() -> Self {
        Self { mode: TriggerMode::FreeRun, interval_ms: 1000 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    /// The model bundle directory.
    pub bundle: PathBuf,
    /// Run the int8 graphs instead of f32.
    pub int8: bool,
    /// Public keys (64 hex digits, or the path of a `.pub` file from `dskd keygen`) whose
    /// signature a bundle must carry to be loaded, at start and at reload. Empty: bundles are
    /// not checked (said once at start).
    pub trusted_keys: Vec<String>,
    /// Inference engine: `tract` (pure Rust, in the binary) or `onnxruntime` (a dskd built with
    /// the `onnxruntime` feature, the runtime's shared library loaded at start).
    pub engine: EngineName,
    /// With `engine = "onnxruntime"`: the `libonnxruntime.so` to load. Empty: `$ORT_DYLIB_PATH`,
    /// then `lib/` beside the binary, the binary's folder, `/usr/lib/dskd/`.
    pub onnxruntime_library: Option<PathBuf>,
    /// With `engine = "tract"`: how its plans lay out the convolutions, `channels-first` (as
    /// the ONNX files are) or `channels-last` (tract's NHWC rewrite, for ARM boards where its
    /// channel-last depthwise kernel may pay: measure with `dskd bench --channels-last`).
    pub tract_layout: Layout,
}

/// The engines a config may name.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EngineName {
    #[default]
    Tract,
    Onnxruntime,
}

impl DetectorConfig {
    /// The engine to load the bundle's graphs on.
    pub fn engine(&self) -> crate::detector::Engine {
        match self.engine {
            EngineName::Tract => crate::detector::Engine::Tract { layout: self.tract_layout },
            EngineName::Onnxruntime => {
                crate::detector::Engine::Onnxruntime { library: self.onnxruntime_library.clone() }
            }
        }
    }
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            bundle: PathBuf::from("models/demo"),
            int8: false,
            trusted_keys: Vec::new(),
            engine: EngineName::Tract,
            onnxruntime_library: None,
            tract_layout: Layout::ChannelsFirst,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Frames waiting for the detector; the oldest is dropped (and counted) when full.
    pub capacity: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self { capacity: 2 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    /// Topic prefix [default: `dskd/<camera>`].
    pub prefix: String,
    pub client_id: String,
    pub keep_alive_s: u64,
    /// Start an in-process broker (rumqttd) on `host:port`: demo and tests need nothing
    /// installed. Production points at mosquitto/EMQX instead.
    pub embedded_broker: bool,
    /// Also publish every verdict (ok or not) on `<prefix>/results`, QoS 0.
    pub results: bool,
    /// Reconnect back-off: first wait and cap, in milliseconds.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Publish `<prefix>/telemetry` every this many seconds (0 = off).
    pub telemetry_interval_s: u64,
    /// Broker user name (empty = anonymous).
    pub username: String,
    /// Broker password; better from `DSKD_MQTT__PASSWORD` or `password_file` than in a file
    /// under version control. Never logged.
    pub password: Secret,
    /// A file whose first line is the password (e.g. a systemd credential).
    pub password_file: PathBuf,
    /// Largest packet sent; larger payloads (an oversized image) are dropped with a warning
    /// instead of being sent (a broker closes the connection on a packet over its limit).
    pub max_packet_bytes: usize,
    /// Connect over TLS (port 8883 by convention).
    pub tls: bool,
    /// PEM file of the CA(s) to trust (empty = the system's store).
    pub ca_file: PathBuf,
    /// Client certificate chain and private key (PEM) for brokers that want mutual TLS.
    pub client_cert_file: PathBuf,
    pub client_key_file: PathBuf,
}

/// A string that never prints (Debug shows `***`).
#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "***" })
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            host: "127.0.0.1".into(),
            port: 1883,
            prefix: String::new(),
            client_id: String::new(),
            keep_alive_s: 5,
            embedded_broker: false,
            results: false,
            backoff_initial_ms: 200,
            backoff_max_ms: 10_000,
            telemetry_interval_s: 10,
            username: String::new(),
            password: Secret::default(),
            password_file: PathBuf::new(),
            max_packet_bytes: 1 << 20,
            tls: false,
            ca_file: PathBuf::new(),
            client_cert_file: PathBuf::new(),
            client_key_file: PathBuf::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// SQLite file holding events until the broker acknowledges them.
    pub path: PathBuf,
    /// Unsent events kept at most; the oldest are dropped (and counted) beyond it.
    pub max_events: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self { path: PathBuf::from("dskd-outbox.sqlite"), max_events: 10_000 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StdoutConfig {
    /// Print every verdict as a JSON line.
    pub enabled: bool,
}

impl Default for StdoutConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            camera: "cam0".into(),
            source: SourceConfig::default(),
            trigger: TriggerConfig::default(),
            detector: DetectorConfig::default(),
            queue: QueueConfig::default(),
            mqtt: MqttConfig::default(),
            outbox: OutboxConfig::default(),
            stdout: StdoutConfig::default(),
            http: HttpConfig::default(),
            images: ImagesConfig::default(),
            drift: DriftConfig::default(),
            review: ReviewConfig::default(),
        }
    }
}

/// A path setting, or None when left empty (the config's way of saying "off" / "not given").
pub fn given(p: &Path) -> Option<&Path> {
    (!p.as_os_str().is_empty()).then_some(p)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The `DSKD_SECTION__KEY` (and `DSKD_CAMERA`) variables of this process.
fn environment() -> config::Environment {
    environment_from(std::env::vars())
}

/// Config from `vars`. The prefix is cut at one `_` (left to itself, the crate cuts it at the
/// key separator and reads only `DSKD__SECTION__KEY`: the documented form was silently
/// ignored). Only variables naming a key are taken: other `DSKD_*` variables (the tests' and
/// the trainer's, e.g. `DSKD_TEACHERS`) are not configuration and must not fail the start.
fn environment_from(vars: impl IntoIterator<Item = (String, String)>) -> config::Environment {
    let keys = vars.into_iter().filter(|(k, _)| {
        k.strip_prefix("DSKD_").is_some_and(|rest| rest.contains("__") || rest.eq_ignore_ascii_case("camera"))
    });
    config::Environment::with_prefix("DSKD")
        .prefix_separator("_")
        .separator("__")
        .try_parsing(true)
        .source(Some(keys.collect()))
}

impl Config {
    /// Layers defaults, the file, `DSKD_*` environment and `overrides` (`section.key=value`).
    pub fn load(file: Option<&Path>, overrides: &[(String, String)]) -> Result<Self, ConfigError> {
        let shown = file.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("<defaults>"));
        let invalid = |message: String| ConfigError::Invalid { path: shown.clone(), message };
        let defaults = config::Config::try_from(&Config::default()).map_err(|e| invalid(e.to_string()))?;
        let mut builder = config::Config::builder().add_source(defaults);
        if let Some(f) = file {
            if !f.exists() {
                return Err(invalid("no such file".into()));
            }
            builder = builder.add_source(config::File::from(f).format(config::FileFormat::Toml));
        }
        builder = builder.add_source(environment());
        for (key, value) in overrides {
            builder = builder.set_override(key.as_str(), value.as_str()).map_err(|e| invalid(e.to_string()))?;
        }
        let cfg: Config = builder.build().and_then(|c| c.try_deserialize()).map_err(|e| invalid(e.to_string()))?;
        cfg.validate().map_err(invalid)?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        if self.queue.capacity == 0 {
            return Err("queue.capacity must be at least 1".into());
        }
        let [low, high] = self.review.band;
        if !(low.is_finite() && high.is_finite() && 0.0 <= low && low <= high) {
            return Err(format!("review.band [{low}, {high}]: give [low, high] with 0 <= low <= high"));
        }
        if self.review.max_items == 0 {
            return Err("review.max_items must be at least 1".into());
        }
        if self.source.kind == SourceKind::Dir && self.source.path.as_os_str().is_empty() {
            return Err("source.path is required for source.kind = \"dir\"".into());
        }
        if self.source.kind == SourceKind::Pipe && self.source.command.is_empty() {
            return Err("source.command is required for source.kind = \"pipe\"".into());
        }
        if self.source.kind == SourceKind::Camera && self.source.pixel_formats.is_empty() {
            return Err("source.pixel_formats must name at least one format for source.kind = \"camera\"".into());
        }
        if self.mqtt.client_cert_file.as_os_str().is_empty() != self.mqtt.client_key_file.as_os_str().is_empty() {
            return Err("mqtt.client_cert_file and mqtt.client_key_file go together".into());
        }
        if self.images.mqtt && (self.images.dir.as_os_str().is_empty() || !self.mqtt.enabled) {
            return Err("images.mqtt needs images.dir (the images it publishes) and mqtt.enabled".into());
        }
        if self.trigger.mode == TriggerMode::External && !self.mqtt.enabled {
            return Err("trigger.mode = \"external\" needs mqtt.enabled = true".into());
        }
        Ok(())
    }

    /// The broker password: `mqtt.password`, else the first line of `mqtt.password_file`.
    pub fn mqtt_password(&self) -> Result<Option<String>, ConfigError> {
        if !self.mqtt.password.0.is_empty() {
            return Ok(Some(self.mqtt.password.0.clone()));
        }
        let Some(file) = given(&self.mqtt.password_file) else { return Ok(None) };
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError::Invalid {
            path: self.mqtt.password_file.clone(),
            message: format!("mqtt.password_file: {e}"),
        })?;
        Ok(Some(text.lines().next().unwrap_or_default().to_string()))
    }

    /// The MQTT topic prefix.
    pub fn prefix(&self) -> String {
        if self.mqtt.prefix.is_empty() { format!("dskd/{}", self.camera) } else { self.mqtt.prefix.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_configs_parse() {
        for f in ["config/dskd.toml", "config/demo.toml"] {
            Config::load(Some(Path::new(f)), &[]).unwrap_or_else(|e| panic!("{f}: {e}"));
        }
    }

    #[test]
    fn environment_variables_set_keys_and_other_dskd_variables_are_left_alone() {
        let vars = [
            ("DSKD_OUTBOX__MAX_EVENTS", "5"),
            ("DSKD_MQTT__HOST", "broker.local"),
            ("DSKD_CAMERA", "line3"),
            ("DSKD_TEACHERS", "/opt/teachers"),
            ("DSKD_TEST_BROKER", "1883"),
        ];
        let env = environment_from(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let cfg: Config = config::Config::builder()
            .add_source(config::Config::try_from(&Config::default()).unwrap())
            .add_source(env)
            .build()
            .and_then(|c| c.try_deserialize())
            .unwrap();
        assert_eq!((cfg.outbox.max_events, cfg.mqtt.host.as_str(), cfg.camera.as_str()), (5, "broker.local", "line3"));
    }

    #[test]
    fn shipped_config_holds_the_defaults() {
        assert_eq!(Config::load(Some(Path::new("config/dskd.toml")), &[]).unwrap(), Config::default());
    }

    #[test]
    fn a_review_band_upside_down_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("band.toml");
        std::fs::write(&f, "[review]\nband = [1.2, 0.8]\n").unwrap();
        let e = Config::load(Some(&f), &[]).unwrap_err().to_string();
        assert!(e.contains("band.toml") && e.contains("review.band [1.2, 0.8]"), "{e}");
    }

    #[test]
    fn unknown_key_is_named_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bad.toml");
        std::fs::write(&f, "[queue]\ncapactiy = 3\n").unwrap();
        let e = Config::load(Some(&f), &[]).unwrap_err().to_string();
        assert!(e.contains("bad.toml") && e.contains("capactiy"), "{e}");
    }

    #[test]
    fn password_comes_from_a_file_and_never_prints() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        let c = Config::load(None, &[("mqtt.password_file".into(), f.display().to_string())]).unwrap();
        assert_eq!(c.mqtt_password().unwrap().as_deref(), Some("s3cret"));
        let c = Config::load(None, &[("mqtt.password".into(), "hunter2".into())]).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn cli_overrides_beat_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[queue]\ncapacity = 3\n").unwrap();
        let c = Config::load(Some(&f), &[("queue.capacity".into(), "7".into())]).unwrap();
        assert_eq!(c.queue.capacity, 7);
    }

    #[test]
    fn engine_is_chosen_by_name_and_a_wrong_one_is_named() {
        let set = |k: &str, v: &str| (k.to_string(), v.to_string());
        let c = Config::load(
            None,
            &[set("detector.engine", "onnxruntime"), set("detector.onnxruntime_library", "/opt/ort/libonnxruntime.so")],
        )
        .unwrap();
        let lib = Some(std::path::PathBuf::from("/opt/ort/libonnxruntime.so"));
        assert_eq!(c.detector.engine(), crate::detector::Engine::Onnxruntime { library: lib });
        assert_eq!(Config::load(None, &[]).unwrap().detector.engine().name(), "tract");
        let e = Config::load(None, &[set("detector.engine", "openvino")]).unwrap_err();
        assert!(format!("{e:#}").contains("openvino"), "{e:#}");
    }

    #[test]
    fn tract_layout_is_chosen_by_name_and_a_wrong_one_is_named() {
        use crate::detector::Engine;
        let set = |v: &str| [("detector.tract_layout".to_string(), v.to_string())];
        assert_eq!(Config::load(None, &[]).unwrap().detector.engine(), Engine::Tract { layout: Layout::ChannelsFirst });
        let c = Config::load(None, &set("channels-last")).unwrap();
        assert_eq!(c.detector.engine(), Engine::Tract { layout: Layout::ChannelsLast });
        let e = Config::load(None, &set("nhwc")).unwrap_err();
        assert!(format!("{e:#}").contains("nhwc"), "{e:#}");
    }
}
