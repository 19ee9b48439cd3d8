//! `camera`: an industrial or UVC camera through nokhwa (V4L2 on Linux).
//!
//! The choices that need no camera — which device a name means, which of the offered modes to
//! take — are plain functions, tested here without hardware. The `driver` part (cargo feature
//! `camera`) only opens the device, streams raw buffers into [`super::pixels`], and reopens the
//! device with capped exponential back-off whenever it fails or goes away: a line camera that
//! is unplugged and plugged back in must not need a restart.

use std::sync::Arc;

use tokio::sync::watch;

use super::pixels::PixelFormat;
use super::{Frame, SourceError};
use crate::config::SourceConfig;
use crate::queue::DropOldest;

/// One capture mode a camera offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{} {:?} @ {} fps", self.width, self.height, self.format, self.fps)
    }
}

/// The device index that `spec` means: "2", "/dev/video2", or a case-insensitive part of a
/// camera's name (exact names win over partial ones).
pub fn resolve_device(spec: &str, cameras: &[(u32, String)]) -> Result<u32, String> {
    let spec = spec.trim();
    if let Ok(n) = spec.strip_prefix("/dev/video").unwrap_or(spec).parse::<u32>() {
        return Ok(n);
    }
    let wanted = spec.to_lowercase();
    let exact = cameras.iter().find(|(_, name)| name.to_lowercase() == wanted);
    let partial = || cameras.iter().find(|(_, name)| name.to_lowercase().contains(&wanted));
    match exact.or_else(partial) {
        Some((i, _)) => Ok(*i),
        None if cameras.is_empty() => Err(format!("no camera named {spec:?}: no cameras found")),
        None => {
            let names: Vec<String> = cameras.iter().map(|(i, n)| format!("{i}: {n}")).collect();
            Err(format!("no camera named {spec:?}; found {}", names.join(", ")))
        }
    }
}

/// The offered mode closest to the request: a wanted format, then the nearest resolution
/// (0 = the largest), then the nearest frame rate (0 = the fastest), then format preference.
pub fn choose_mode(offered: &[Mode], wanted: &[PixelFormat], width: u32, height: u32, fps: u32) -> Option<Mode> {
    let rank = |m: &Mode| {
        let res = if width == 0 || height == 0 {
            u64::MAX - u64::from(m.width) * u64::from(m.height)
        } else {
            u64::from(m.width.abs_diff(width)) + u64::from(m.height.abs_diff(height))
        };
        let rate = if fps == 0 { u32::MAX - m.fps } else { m.fps.abs_diff(fps) };
        let pref = wanted.iter().position(|f| *f == m.format).unwrap_or(usize::MAX);
        (res, rate, pref)
    };
    offered.iter().filter(|m| wanted.contains(&m.format)).min_by_key(|m| rank(m)).copied()
}

/// Runs the camera source until shutdown; device errors are logged and retried, never fatal.
pub async fn run(
    cfg: &SourceConfig,
    queue: &Arc<DropOldest<Frame>>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), SourceError> {
    let (cfg, queue) = (cfg.clone(), Arc::clone(queue));
    // nokhwa's camera handle is not Send and its reads block: it lives on one blocking thread.
    tokio::task::spawn_blocking(move || driver::capture_loop(&cfg, &queue, &shutdown))
        .await
        .map_err(|e| SourceError::Data(format!("camera thread: {e}")))?
}

/// The cameras this machine has, with every mode each offers (`dskd cameras`).
pub fn list() -> Result<Vec<(u32, String, Vec<Mode>)>, SourceError> {
    driver::list()
}

#[cfg(feature = "camera")]
mod driver {
    use nokhwa::Camera;
    use nokhwa::utils::{ApiBackend, CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType};
    use tokio::sync::watch;

    use super::super::{Frame, SourceError, pixels};
    use super::{Mode, PixelFormat, choose_mode, resolve_device};
    use crate::config::SourceConfig;
    use crate::queue::DropOldest;

    const ALL: [FrameFormat; 6] = [
        FrameFormat::MJPEG,
        FrameFormat::YUYV,
        FrameFormat::NV12,
        FrameFormat::GRAY,
        FrameFormat::RAWRGB,
        FrameFormat::RAWBGR,
    ];

    fn pixel_format(f: FrameFormat) -> PixelFormat {
        match f {
            FrameFormat::MJPEG => PixelFormat::Mjpeg,
            FrameFormat::YUYV => PixelFormat::Yuyv,
            FrameFormat::NV12 => PixelFormat::Nv12,
            FrameFormat::GRAY => PixelFormat::Gray,
            FrameFormat::RAWRGB => PixelFormat::Rgb,
            FrameFormat::RAWBGR => PixelFormat::Bgr,
        }
    }

    fn mode(f: &CameraFormat) -> Mode {
        Mode { format: pixel_format(f.format()), width: f.width(), height: f.height(), fps: f.frame_rate() }
    }

    fn cameras() -> Result<Vec<(u32, String)>, String> {
        let found = nokhwa::query(ApiBackend::Auto).map_err(|e| format!("listing cameras: {e}"))?;
        Ok(found.iter().filter_map(|c| Some((c.index().as_index().ok()?, c.human_name()))).collect())
    }

    fn open_any(index: u32) -> Result<Camera, String> {
        let any = RequestedFormat::with_formats(RequestedFormatType::None, &ALL);
        Camera::new(CameraIndex::Index(index), any).map_err(|e| format!("camera {index}: {e}"))
    }

    pub fn list() -> Result<Vec<(u32, String, Vec<Mode>)>, SourceError> {
        let mut out = Vec::new();
        for (index, name) in cameras().map_err(SourceError::Data)? {
            let modes = open_any(index)
                .and_then(|mut c| c.compatible_camera_formats().map_err(|e| e.to_string()))
                .map(|fs| fs.iter().map(mode).collect())
                .unwrap_or_default();
            out.push((index, name, modes));
        }
        Ok(out)
    }

    /// Opens the configured device in the mode closest to the request and starts streaming.
    fn open(cfg: &SourceConfig) -> Result<(Camera, Mode, String), String> {
        // Names need the device list; plain indices and paths do not (and work when the
        // listing itself fails).
        let listed = cameras().unwrap_or_default();
        let index = resolve_device(&cfg.device, &listed)?;
        let mut cam = open_any(index)?;
        let offered: Vec<Mode> = cam
            .compatible_camera_formats()
            .map_err(|e| format!("camera {index}: modes: {e}"))?
            .iter()
            .map(mode)
            .collect();
        let m = choose_mode(&offered, &cfg.pixel_formats, cfg.width, cfg.height, cfg.fps).ok_or_else(|| {
            format!("camera {index} offers no mode in {:?} (it offers {} modes)", cfg.pixel_formats, offered.len())
        })?;
        let fmt = ALL.into_iter().find(|f| pixel_format(*f) == m.format).expect("every PixelFormat has a FrameFormat");
        let exact = CameraFormat::new_from(m.width, m.height, fmt, m.fps);
        cam.set_camera_requset(RequestedFormat::with_formats(RequestedFormatType::Exact(exact), &[fmt]))
            .map_err(|e| format!("camera {index}: setting {m}: {e}"))?;
        cam.open_stream().map_err(|e| format!("camera {index}: starting the stream: {e}"))?;
        let name =
            listed.iter().find(|(i, _)| *i == index).map_or_else(|| format!("camera {index}"), |(_, n)| n.clone());
        let actual = mode(&cam.camera_format());
        Ok((cam, actual, name))
    }

    /// Streams until the device fails (Err) or shutdown / a closed queue (Ok).
    fn stream(
        cam: &mut Camera,
        m: Mode,
        cfg: &SourceConfig,
        queue: &DropOldest<Frame>,
        shutdown: &watch::Receiver<bool>,
        seq: &mut u64,
    ) -> Result<(), String> {
        while !*shutdown.borrow() {
            let raw = cam.frame_raw().map_err(|e| format!("reading a frame: {e}"))?;
            match pixels::to_image(m.format, m.width, m.height, &raw, cfg.gray) {
                Ok(img) => {
                    if !queue.push(Frame::new(*seq, img, format!("camera:{}", cfg.device))) {
                        return Ok(());
                    }
                    *seq += 1;
                }
                // A torn or corrupt frame is skipped; the next one is usually fine.
                Err(e) => tracing::warn!(device = %cfg.device, error = %e, "camera frame skipped"),
            }
        }
        Ok(())
    }

    pub fn capture_loop(
        cfg: &SourceConfig,
        queue: &DropOldest<Frame>,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), SourceError> {
        super::super::reopen_with_backoff(cfg, shutdown, "camera", |seq| {
            let (mut cam, m, name) = open(cfg)?;
            tracing::info!(device = %cfg.device, camera = %name, mode = %m, "camera streaming");
            let r = stream(&mut cam, m, cfg, queue, shutdown, seq);
            let _ = cam.stop_stream();
            r
        });
        Ok(())
    }
}

#[cfg(not(feature = "camera"))]
mod driver {
    use super::super::{Frame, SourceError};
    use super::Mode;
    use crate::config::SourceConfig;
    use crate::queue::DropOldest;

    const MISSING: &str = "this dskd was built without the `camera` feature (cargo build --features camera)";

    pub fn list() -> Result<Vec<(u32, String, Vec<Mode>)>, SourceError> {
        Err(SourceError::Data(MISSING.into()))
    }

    pub fn capture_loop(
        _: &SourceConfig,
        _: &DropOldest<Frame>,
        _: &tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), SourceError> {
        Err(SourceError::Data(MISSING.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAMS: [(u32, &str); 2] = [(0, "Integrated Webcam"), (2, "Basler acA1300 Cam")];

    fn cams() -> Vec<(u32, String)> {
        CAMS.iter().map(|(i, n)| (*i, n.to_string())).collect()
    }

    #[test]
    fn devices_by_index_path_or_name() {
        assert_eq!(resolve_device("3", &[]), Ok(3));
        assert_eq!(resolve_device("/dev/video2", &[]), Ok(2));
        assert_eq!(resolve_device("basler", &cams()), Ok(2));
        assert_eq!(resolve_device("Integrated Webcam", &cams()), Ok(0));
        let e = resolve_device("ids ueye", &cams()).unwrap_err();
        assert!(e.contains("ids ueye") && e.contains("2: Basler acA1300 Cam"), "{e}");
        assert!(resolve_device("basler", &[]).unwrap_err().contains("no cameras found"));
    }

    fn m(format: PixelFormat, width: u32, height: u32, fps: u32) -> Mode {
        Mode { format, width, height, fps }
    }

    #[test]
    fn the_closest_offered_mode_wins() {
        use PixelFormat::*;
        let offered = [
            m(Yuyv, 640, 480, 30),
            m(Mjpeg, 640, 480, 30),
            m(Mjpeg, 1280, 720, 30),
            m(Mjpeg, 1280, 720, 60),
            m(Nv12, 1920, 1080, 15),
        ];
        // Same resolution and rate in two formats: the preferred format.
        assert_eq!(choose_mode(&offered, &[Mjpeg, Yuyv], 640, 480, 30), Some(m(Mjpeg, 640, 480, 30)));
        assert_eq!(choose_mode(&offered, &[Yuyv, Mjpeg], 640, 480, 0), Some(m(Yuyv, 640, 480, 30)));
        // Nearest resolution, then nearest rate.
        assert_eq!(choose_mode(&offered, &[Mjpeg], 1200, 700, 25), Some(m(Mjpeg, 1280, 720, 30)));
        // 0 = largest / fastest, among the accepted formats only.
        assert_eq!(choose_mode(&offered, &[Mjpeg, Yuyv], 0, 0, 0), Some(m(Mjpeg, 1280, 720, 60)));
        assert_eq!(choose_mode(&offered, &[Nv12, Mjpeg], 0, 0, 0), Some(m(Nv12, 1920, 1080, 15)));
        assert_eq!(choose_mode(&offered, &[Gray], 640, 480, 30), None);
    }
}
