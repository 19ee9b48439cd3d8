//! The embedded MQTT broker (rumqttd), for the demo and the tests: nothing to install.
//! Production points `[mqtt]` at mosquitto or EMQX instead.

use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("embedded broker on {addr}: {message}")]
    Start { addr: SocketAddr, message: String },
}

/// Starts a broker listening on `addr` in its own thread; it lives as long as the process.
pub fn start(addr: SocketAddr) -> Result<(), BrokerError> {
    start_with_auth(addr, None)
}

/// Like [`start`], accepting only the given user name and password when `auth` is set.
pub fn start_with_auth(addr: SocketAddr, auth: Option<(&str, &str)>) -> Result<(), BrokerError> {
    let toml = format!(
        r#"
id = 0
[router]
max_connections = 100
max_outgoing_packet_count = 1000
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "{addr}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 1048576
max_inflight_count = 200
dynamic_filters = true
"#
    );
    let mut config: rumqttd::Config =
        toml::from_str(&toml).map_err(|e| BrokerError::Start { addr, message: e.to_string() })?;
    if let Some((user, pass)) = auth {
        for server in config.v4.iter_mut().flat_map(|v4| v4.values_mut()) {
            server.connections.auth = Some([(user.to_string(), pass.to_string())].into_iter().collect());
        }
    }
    // Fail early with a clear message if the port is taken (rumqttd would only log it).
    std::net::TcpListener::bind(addr).map_err(|e| BrokerError::Start { addr, message: e.to_string() })?;
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = rumqttd::Broker::new(config).start() {
                tracing::error!(%addr, error = %e, "embedded broker stopped");
            }
        })
        .map_err(|e| BrokerError::Start { addr, message: e.to_string() })?;
    Ok(())
}
