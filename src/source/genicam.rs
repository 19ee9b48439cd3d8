//! `genicam`: GigE Vision and USB3 Vision cameras through aravis (cargo feature `genicam`).
//!
//! As with `camera`, the choices that need no camera are plain functions tested here: which
//! device a spec means and which pixel format to ask for. The `driver` opens the device,
//! applies exposure, gain, frame rate, region, trigger and GigE packet size and resend, streams buffers
//! into [`super::pixels`], fires a software trigger for each `cmd/trigger` when the camera is
//! software-triggered, and reopens the device with capped back-off whenever it fails, stalls
//! or goes away.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::pixels::PixelFormat;
use super::{Frame, SourceError};
use crate::config::SourceConfig;
use crate::queue::DropOldest;

/// One GenICam device as aravis lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// aravis's id (`Vendor-Model-Serial` for GigE, e.g. `Aravis-Fake-GV01`): what opens it.
    pub id: String,
    pub vendor: String,
    pub model: String,
    /// The MAC address of a GigE camera, the serial number of a USB3 one.
    pub physical_id: String,
    /// `GigEVision`, `USB3Vision` or `Fake`.
    pub protocol: String,
    /// IP address (GigE) or bus address.
    pub address: String,
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} {}, {} {}, {})",
            self.id, self.vendor, self.model, self.protocol, self.address, self.physical_id
        )
    }
}

/// The device id that `spec` means: an index into the list ("0", up to three digits), an IP address (opened
/// directly, GigE cameras need not be discoverable), an exact id, physical id (MAC, USB
/// serial) or address, or a case-insensitive part of the id (which holds the serial number),
/// vendor or model (exact matches win).
pub fn resolve_device(spec: &str, devices: &[Device]) -> Result<String, String> {
    let spec = spec.trim();
    // Up to three digits is an index; serial numbers (often all digits) are longer.
    let index = if spec.len() <= 3 { spec.parse::<usize>().ok() } else { None };
    if let Some(i) = index {
        return devices
            .get(i)
            .map(|d| d.id.clone())
            .ok_or_else(|| format!("no GenICam device {i}: {} found{}", devices.len(), listing(devices)));
    }
    if spec.parse::<std::net::IpAddr>().is_ok() {
        return Ok(spec.to_string());
    }
    let exact = devices.iter().find(|d| [&d.id, &d.physical_id, &d.address].iter().any(|v| v.as_str() == spec));
    let wanted = spec.to_lowercase();
    let partial =
        || devices.iter().find(|d| [&d.id, &d.vendor, &d.model].iter().any(|v| v.to_lowercase().contains(&wanted)));
    match exact.or_else(partial) {
        Some(d) => Ok(d.id.clone()),
        None => Err(format!("no GenICam device matches {spec:?}{}", listing(devices))),
    }
}

fn listing(devices: &[Device]) -> String {
    if devices.is_empty() {
        return ": no devices found".into();
    }
    let all: Vec<String> = devices.iter().enumerate().map(|(i, d)| format!("{i}: {d}")).collect();
    format!("; found {}", all.join(", "))
}

/// GenICam's name (PFNC) for each pixel format dskd decodes.
pub fn pfnc_name(f: PixelFormat) -> Option<&'static str> {
    Some(match f {
        PixelFormat::Gray => "Mono8",
        PixelFormat::Gray10 => "Mono10",
        PixelFormat::Gray12 => "Mono12",
        PixelFormat::Gray16 => "Mono16",
        PixelFormat::Rgb => "RGB8",
        PixelFormat::Bgr => "BGR8",
        PixelFormat::BayerRggb => "BayerRG8",
        PixelFormat::BayerGrbg => "BayerGR8",
        PixelFormat::BayerGbrg => "BayerGB8",
        PixelFormat::BayerBggr => "BayerBG8",
        PixelFormat::Mjpeg | PixelFormat::Yuyv | PixelFormat::Nv12 => return None,
    })
}

/// The pixel format dskd decodes for a GenICam name (older cameras say `RGB8Packed`).
pub fn from_pfnc(name: &str) -> Option<PixelFormat> {
    const ALL: [PixelFormat; 10] = [
        PixelFormat::Gray,
        PixelFormat::Gray10,
        PixelFormat::Gray12,
        PixelFormat::Gray16,
        PixelFormat::Rgb,
        PixelFormat::Bgr,
        PixelFormat::BayerRggb,
        PixelFormat::BayerGrbg,
        PixelFormat::BayerGbrg,
        PixelFormat::BayerBggr,
    ];
    let name = name.strip_suffix("Packed").unwrap_or(name);
    ALL.into_iter().find(|f| pfnc_name(*f) == Some(name))
}

/// The format to ask for: the first of `wanted` the camera offers, else the first it offers
/// that dskd decodes; `None` when it offers nothing dskd decodes.
pub fn choose_format(offered: &[String], wanted: &[PixelFormat]) -> Option<(String, PixelFormat)> {
    let decodable = || offered.iter().filter_map(|o| from_pfnc(o).map(|f| (o.clone(), f)));
    wanted.iter().find_map(|w| decodable().find(|(_, f)| f == w)).or_else(|| decodable().next())
}

/// Runs the GenICam source until shutdown; device errors are logged and retried, never fatal.
/// Each message on `triggers` fires one software trigger (when `trigger_source = "Software"`).
pub async fn run(
    cfg: &SourceConfig,
    queue: &Arc<DropOldest<Frame>>,
    shutdown: watch::Receiver<bool>,
    triggers: mpsc::UnboundedReceiver<()>,
) -> Result<(), SourceError> {
    let (cfg, queue) = (cfg.clone(), Arc::clone(queue));
    // aravis's calls block (and its objects are not Send): the camera lives on one thread.
    tokio::task::spawn_blocking(move || driver::capture_loop(&cfg, &queue, &shutdown, triggers))
        .await
        .map_err(|e| SourceError::Data(format!("genicam thread: {e}")))?
}

/// The GenICam devices aravis finds (`dskd cameras`).
pub fn list() -> Result<Vec<Device>, SourceError> {
    driver::list()
}

#[cfg(feature = "genicam")]
mod driver {
    use std::time::{Duration, Instant};

    use aravis::glib::prelude::Cast;
    use aravis::prelude::*;
    use aravis::{Buffer, BufferStatus, Camera, GvStreamPacketResend, Stream};
    use tokio::sync::{mpsc, watch};

    use super::super::{Frame, SourceError, pixels};
    use super::{Device, choose_format, resolve_device};
    use crate::config::SourceConfig;
    use crate::queue::DropOldest;

    /// Buffers queued to the stream: enough to ride out a slow inspection at camera rate.
    const BUFFERS: usize = 8;
    /// How often a triggered (silent) camera is asked whether it is still there.
    const ALIVE_EVERY: Duration = Duration::from_secs(2);

    fn text(c: &std::ffi::CStr) -> String {
        c.to_string_lossy().into_owned()
    }

    pub fn list() -> Result<Vec<Device>, SourceError> {
        // SAFETY: the listing touches aravis's global device list; dskd lists from one thread
        // at a time (the source thread, or `dskd cameras` before anything else runs).
        let found = unsafe { aravis::get_device_list() };
        Ok(found
            .iter()
            .map(|d| Device {
                id: text(&d.id),
                vendor: text(&d.vendor),
                model: text(&d.model),
                physical_id: text(&d.physical_id),
                protocol: text(&d.protocol),
                address: text(&d.address),
            })
            .collect())
    }

    /// An open, configured camera and its running stream.
    struct Open {
        camera: Camera,
        stream: Stream,
        format: pixels::PixelFormat,
        id: String,
        software: bool,
    }

    fn err(what: &str, e: impl std::fmt::Display) -> String {
        format!("{what}: {e}")
    }

    /// Opens the configured device, applies the configuration and starts acquisition.
    fn open(cfg: &SourceConfig) -> Result<Open, String> {
        let listed = list().unwrap_or_default();
        let id = resolve_device(&cfg.device, &listed)?;
        let camera = Camera::new(Some(&id)).map_err(|e| err(&format!("opening {id}"), e))?;
        start(camera, id, cfg)
    }

    /// Applies the configuration to an opened camera and starts acquisition.
    fn start(camera: Camera, id: String, cfg: &SourceConfig) -> Result<Open, String> {
        let offered: Vec<String> = camera
            .dup_available_pixel_formats_as_strings()
            .map_err(|e| err("pixel formats", e))?
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (name, format) = choose_format(&offered, &cfg.pixel_formats)
            .ok_or_else(|| format!("{id} offers no pixel format dskd decodes (it offers {offered:?})"))?;
        camera.set_pixel_format_from_string(&name).map_err(|e| err(&format!("PixelFormat {name}"), e))?;
        if let Some([x, y, w, h]) = cfg.roi {
            camera.set_region(x as i32, y as i32, w as i32, h as i32).map_err(|e| err("region", e))?;
        }
        if let Some(us) = cfg.exposure_us {
            camera.set_exposure_time(us).map_err(|e| err("ExposureTime", e))?;
        }
        if let Some(db) = cfg.gain_db {
            camera.set_gain(db).map_err(|e| err("Gain", e))?;
        }
        let software = cfg.trigger_source.eq_ignore_ascii_case("software");
        if cfg.trigger_source.is_empty() {
            camera.clear_triggers().map_err(|e| err("TriggerMode Off", e))?;
            if cfg.fps > 0 {
                camera.set_frame_rate(f64::from(cfg.fps)).map_err(|e| err("AcquisitionFrameRate", e))?;
            }
        } else {
            // TriggerSelector FrameStart, TriggerMode On, TriggerSource as configured.
            camera.set_trigger(&cfg.trigger_source).map_err(|e| err(&format!("trigger {}", cfg.trigger_source), e))?;
            if !software && !cfg.trigger_activation.is_empty() {
                camera
                    .set_string("TriggerActivation", &cfg.trigger_activation)
                    .map_err(|e| err(&format!("TriggerActivation {}", cfg.trigger_activation), e))?;
            }
        }
        if camera.is_gv_device() {
            match cfg.packet_size {
                0 => camera.gv_auto_packet_size().map(|_| ()).map_err(|e| err("GigE packet size negotiation", e))?,
                n => camera.gv_set_packet_size(n as i32).map_err(|e| err(&format!("GigE packet size {n}"), e))?,
            }
        }
        let stream = camera.create_stream().map_err(|e| err("stream", e))?;
        if let Some(gv) = stream.downcast_ref::<aravis::GvStream>() {
            let resend = if cfg.packet_resend { GvStreamPacketResend::Always } else { GvStreamPacketResend::Never };
            gv.set_packet_resend(resend);
        }
        let payload = camera.payload().map_err(|e| err("payload size", e))? as usize;
        for _ in 0..BUFFERS {
            stream.push_buffer(Buffer::new_allocate(payload));
        }
        camera.start_acquisition().map_err(|e| err("AcquisitionStart", e))?;
        Ok(Open { camera, stream, format, id, software })
    }

    /// One buffer's image, or why it was skipped.
    fn image(buf: &Buffer, format: pixels::PixelFormat, gray: bool) -> Result<image::DynamicImage, String> {
        if buf.status() != BufferStatus::Success {
            return Err(format!("buffer status {:?}", buf.status()));
        }
        let (w, h) = (buf.image_width() as u32, buf.image_height() as u32);
        pixels::to_image(format, w, h, &buf.image_data(), gray).map_err(|e| e.to_string())
    }

    /// Streams until the device fails or stalls (Err) or shutdown / a closed queue (Ok).
    fn stream(
        o: &Open,
        cfg: &SourceConfig,
        queue: &DropOldest<Frame>,
        shutdown: &watch::Receiver<bool>,
        triggers: &mut mpsc::UnboundedReceiver<()>,
        seq: &mut u64,
    ) -> Result<(), String> {
        let free_running = cfg.trigger_source.is_empty();
        let stall = Duration::from_millis(cfg.stall_ms.max(100));
        let (mut last_frame, mut last_check) = (Instant::now(), Instant::now());
        while !*shutdown.borrow() {
            while let Ok(()) = triggers.try_recv() {
                if o.software {
                    o.camera.software_trigger().map_err(|e| err("TriggerSoftware", e))?;
                }
            }
            let Some(buf) = o.stream.timeout_pop_buffer(100_000) else {
                if free_running && last_frame.elapsed() > stall {
                    return Err(format!("no frame for {} ms", stall.as_millis()));
                }
                if !free_running && last_check.elapsed() > ALIVE_EVERY {
                    // A triggered camera is silent between triggers: ask it something instead.
                    o.camera.string("DeviceModelName").map_err(|e| err("device lost", e))?;
                    last_check = Instant::now();
                }
                continue;
            };
            let result = image(&buf, o.format, cfg.gray);
            o.stream.push_buffer(buf);
            match result {
                Ok(img) => {
                    last_frame = Instant::now();
                    if !queue.push(Frame::new(*seq, img, format!("genicam:{}", o.id))) {
                        return Ok(());
                    }
                    *seq += 1;
                }
                // An incomplete or corrupt buffer is skipped; the next one is usually fine.
                Err(e) => tracing::warn!(device = %o.id, error = %e, "genicam frame skipped"),
            }
        }
        Ok(())
    }

    /// aravis's in-process fake camera (its Fake interface, no network): configured like any
    /// camera, it streams decoded frames into the queue. (It streams whatever the trigger
    /// settings: 8 frames in 1.5 s with a software trigger set and none fired, so triggering is
    /// tested on the GigE simulator, `tests/daemon.rs`.)
    #[cfg(test)]
    #[test]
    fn the_in_library_fake_camera_streams_decoded_frames() {
        let device = aravis::FakeDevice::new("DSKD1").expect("aravis's fake device");
        let camera = Camera::with_device(&device).expect("a camera on it");
        let cfg = SourceConfig { kind: crate::config::SourceKind::Genicam, ..SourceConfig::default() };
        let open = start(camera, "DSKD1".into(), &cfg).expect("configured and started");
        let queue = DropOldest::new(64);
        let (stop, shutdown) = watch::channel(false);
        let (_fire, mut triggers) = mpsc::unbounded_channel();
        let mut seq = 0;
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(1500));
                stop.send_replace(true);
            });
            stream(&open, &cfg, &queue, &shutdown, &mut triggers, &mut seq).unwrap();
        });
        let _ = open.camera.stop_acquisition();
        assert!(seq >= 2 && queue.len() as u64 == seq.min(64), "{seq} frames");
    }

    pub fn capture_loop(
        cfg: &SourceConfig,
        queue: &DropOldest<Frame>,
        shutdown: &watch::Receiver<bool>,
        mut triggers: mpsc::UnboundedReceiver<()>,
    ) -> Result<(), SourceError> {
        super::super::reopen_with_backoff(cfg, shutdown, "genicam camera", |seq| {
            let result = open(cfg).and_then(|o| {
                tracing::info!(device = %o.id, format = ?o.format, trigger = %cfg.trigger_source, "genicam streaming");
                let r = stream(&o, cfg, queue, shutdown, &mut triggers, seq);
                let _ = o.camera.stop_acquisition();
                r
            });
            if result.is_err() {
                // Triggers that came while the camera was away are not kept for the next one.
                while triggers.try_recv().is_ok() {}
            }
            result
        });
        Ok(())
    }
}

#[cfg(not(feature = "genicam"))]
mod driver {
    use super::super::{Frame, SourceError};
    use super::Device;
    use crate::config::SourceConfig;
    use crate::queue::DropOldest;

    const MISSING: &str = "this dskd was built without the `genicam` feature (cargo build --features genicam)";

    pub fn list() -> Result<Vec<Device>, SourceError> {
        Err(SourceError::Data(MISSING.into()))
    }

    pub fn capture_loop(
        _: &SourceConfig,
        _: &DropOldest<Frame>,
        _: &tokio::sync::watch::Receiver<bool>,
        _: tokio::sync::mpsc::UnboundedReceiver<()>,
    ) -> Result<(), SourceError> {
        Err(SourceError::Data(MISSING.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: &str, model: &str, mac: &str, address: &str) -> Device {
        Device {
            id: id.into(),
            vendor: "Basler".into(),
            model: model.into(),
            physical_id: mac.into(),
            protocol: "GigEVision".into(),
            address: address.into(),
        }
    }

    #[test]
    fn devices_by_index_address_id_serial_or_name() {
        let found = [
            dev("Basler-acA1300-21700001", "acA1300-60gm", "00:30:53:12:34:56", "192.168.1.20"),
            dev("Basler-a2A1920-40001234", "a2A1920-51gc", "00:30:53:ab:cd:ef", "192.168.1.21"),
        ];
        assert_eq!(resolve_device("1", &found).unwrap(), "Basler-a2A1920-40001234");
        assert_eq!(resolve_device("10.0.0.5", &[]).unwrap(), "10.0.0.5", "an address opens directly");
        assert_eq!(resolve_device("21700001", &found).unwrap(), "Basler-acA1300-21700001", "the serial");
        assert_eq!(resolve_device("00:30:53:ab:cd:ef", &found).unwrap(), "Basler-a2A1920-40001234");
        assert_eq!(resolve_device("192.168.1.21", &found).unwrap(), "192.168.1.21");
        assert_eq!(resolve_device("a2a1920", &found).unwrap(), "Basler-a2A1920-40001234");
        let e = resolve_device("flir", &found).unwrap_err();
        assert!(e.contains("flir") && e.contains("1: Basler-a2A1920-40001234"), "{e}");
        assert!(resolve_device("2", &found).unwrap_err().contains("no GenICam device 2"));
        assert!(resolve_device("basler", &[]).unwrap_err().contains("no devices found"));
    }

    #[test]
    fn the_wanted_format_first_else_any_decodable_one() {
        let offered: Vec<String> = ["Mono8", "Mono12", "BayerRG8", "YUV422_8"].map(String::from).to_vec();
        let want = |w: &[PixelFormat]| choose_format(&offered, w).map(|(n, _)| n);
        assert_eq!(want(&[PixelFormat::BayerRggb, PixelFormat::Gray]).as_deref(), Some("BayerRG8"));
        assert_eq!(want(&[PixelFormat::Gray12]).as_deref(), Some("Mono12"));
        // Nothing wanted is offered (the UVC default list): the first decodable one.
        assert_eq!(want(&[PixelFormat::Mjpeg, PixelFormat::Yuyv]).as_deref(), Some("Mono8"));
        assert_eq!(choose_format(&["YUV422_8".to_string()], &[PixelFormat::Gray]), None);
        assert_eq!(from_pfnc("RGB8Packed"), Some(PixelFormat::Rgb));
    }
}
