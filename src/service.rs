//! systemd integration: `sd_notify` messages over `$NOTIFY_SOCKET` (READY, WATCHDOG, STATUS,
//! RELOADING, STOPPING), written by hand: it is one datagram per message.
//!
//! The watchdog is fed from the frame loop only, so systemd restarts a daemon whose frames
//! stopped moving even if its other tasks (MQTT, signals) are still alive.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// A handle on `$NOTIFY_SOCKET`; all methods are no-ops when it is not set.
pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    /// Half of `$WATCHDOG_USEC` (systemd's advice), if the unit has `WatchdogSec=`.
    watchdog_every: Option<Duration>,
    last_ping: Option<Instant>,
}

fn notify_addr(path: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        }
        None => std::os::unix::net::SocketAddr::from_pathname(path),
    }
}

impl Notifier {
    pub fn from_env() -> Self {
        let socket = std::env::var("NOTIFY_SOCKET").ok().and_then(|p| {
            let addr =
                notify_addr(&p).map_err(|e| tracing::warn!(socket = %p, error = %e, "bad NOTIFY_SOCKET")).ok()?;
            Some((UnixDatagram::unbound().ok()?, addr))
        });
        let watchdog_every = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(|us| Duration::from_micros(us / 2));
        Self { socket, watchdog_every, last_ping: None }
    }

    /// Sends one notification (e.g. `READY=1`); errors are logged, never fatal.
    pub fn notify(&self, msg: &str) {
        if let Some((sock, addr)) = &self.socket
            && let Err(e) = sock.send_to_addr(msg.as_bytes(), addr)
        {
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }

    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={status}"));
    }

    /// Called by the frame loop after each frame: pings the watchdog when due.
    pub fn frame_done(&mut self, status: impl FnOnce() -> String) {
        let Some(every) = self.watchdog_every else { return };
        if self.last_ping.is_none_or(|t| t.elapsed() >= every) {
            self.notify(&format!("WATCHDOG=1\nSTATUS={}", status()));
            self.last_ping = Some(Instant::now());
        }
    }
}
