//! The source stage: an MQTT client (rumqttc, MQTT 5 or 3.1.1) with manual acks and a
//! persistent session, reconnecting with jittered backoff. Every QoS 1 message is handed on
//! with an [`AckToken`]; it is acknowledged only when the ack stage says so.
//!
//! Messages the broker redelivers (DUP) are processed like any other: the broker resends
//! exactly those it never got an ack for, so dropping them could lose data.

use crate::config::{Mqtt, Protocol};
use crate::transform::Message;
use rumqttc::v5::mqttbytes::v5::Packet as V5Packet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// A received message and what is needed to acknowledge it.
#[derive(Debug)]
pub struct Incoming {
    /// The message as the transform stage sees it.
    pub message: Message,
    /// Redelivered by the broker (DUP flag).
    pub dup: bool,
    /// The ack handle.
    pub ack: AckToken,
}

/// Identifies a received publish for its PUBACK.
#[derive(Debug, Clone)]
pub struct AckToken {
    /// The connection it arrived on; acks for an older connection are not sent, because the
    /// broker redelivers those messages on the new one (and may reuse their packet ids).
    connection: u64,
    publish: AckPublish,
}

#[derive(Debug, Clone)]
enum AckPublish {
    V5(rumqttc::v5::mqttbytes::v5::Publish),
    V311(rumqttc::Publish),
}

#[derive(Clone)]
enum Client {
    V5(rumqttc::v5::AsyncClient),
    V311(rumqttc::AsyncClient),
}

/// The MQTT side: sends acks and stops the connection.
#[derive(Clone)]
pub struct Source {
    client: Client,
    connection: Arc<AtomicU64>,
    stopping: Arc<AtomicBool>,
}

/// Source errors.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The URL is not usable.
    #[error("mqtt.url {0:?}: {1}")]
    Url(String, String),
    /// The client's request queue is closed (the event loop ended).
    #[error("the MQTT client stopped: {0}")]
    Closed(String),
}

fn host_port(url: &str) -> Result<(String, u16), SourceError> {
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .ok_or_else(|| {
            SourceError::Url(
                url.into(),
                "expected mqtt://host:port (TLS is not supported yet)".into(),
            )
        })?;
    let rest = rest.trim_end_matches('/');
    match rest.rsplit_once(':') {
        Some((h, p)) => Ok((
            h.to_owned(),
            p.parse()
                .map_err(|_| SourceError::Url(url.into(), format!("port {p:?} is not a number")))?,
        )),
        None => Ok((rest.to_owned(), 1883)),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Backoff before reconnect attempt `n` (from 0): exponential to 10 s, with ±50 % jitter so
/// a fleet of weir processes does not reconnect in lockstep.
fn backoff(n: u32) -> Duration {
    let base = 100u64.saturating_mul(1 << n.min(7)).min(10_000);
    let jitter = rand::random_range(base / 2..=base + base / 2);
    Duration::from_millis(jitter)
}

impl Source {
    /// Connect and subscribe; messages arrive on the returned channel. The event loop runs
    /// on its own task until [`Source::disconnect`].
    pub fn start(cfg: &Mqtt) -> Result<(Source, mpsc::Receiver<Incoming>), SourceError> {
        let (host, port) = host_port(&cfg.url)?;
        let in_flight = usize::from(cfg.max_in_flight);
        let (tx, rx) = mpsc::channel(in_flight + 16);
        let connection = Arc::new(AtomicU64::new(0));
        let stopping = Arc::new(AtomicBool::new(false));
        // Room for every ack that can be outstanding, so acking never waits on the loop.
        let requests = in_flight * 2 + 64;
        let link = Link {
            subs: cfg.subscriptions.clone(),
            tx,
            connection: connection.clone(),
            stopping: stopping.clone(),
            failures: 0,
        };
        let client = match cfg.protocol {
            Protocol::V5 => {
                let mut o = rumqttc::v5::MqttOptions::new(&cfg.client_id, host, port);
                o.set_manual_acks(true)
                    .set_clean_start(false)
                    .set_session_expiry_interval(Some(cfg.session_expiry_s))
                    .set_receive_maximum(Some(cfg.max_in_flight))
                    .set_keep_alive(Duration::from_secs(cfg.keep_alive_s.into()));
                if let Some(u) = &cfg.username {
                    o.set_credentials(u, cfg.password.clone().unwrap_or_default());
                }
                let (client, eventloop) = rumqttc::v5::AsyncClient::new(o, requests);
                tokio::spawn(run_v5(eventloop, client.clone(), link));
                Client::V5(client)
            }
            Protocol::V311 => {
                let mut o = rumqttc::MqttOptions::new(&cfg.client_id, host, port);
                o.set_manual_acks(true)
                    .set_clean_session(false)
                    .set_keep_alive(Duration::from_secs(cfg.keep_alive_s.into()));
                if let Some(u) = &cfg.username {
                    o.set_credentials(u, cfg.password.clone().unwrap_or_default());
                }
                let (client, eventloop) = rumqttc::AsyncClient::new(o, requests);
                tokio::spawn(run_v311(eventloop, client.clone(), link));
                Client::V311(client)
            }
        };
        Ok((
            Source {
                client,
                connection,
                stopping,
            },
            rx,
        ))
    }

    /// Send the PUBACK for a message, unless it arrived on an earlier connection.
    pub async fn ack(&self, token: &AckToken) -> Result<bool, SourceError> {
        if token.connection != self.connection.load(Ordering::Acquire) {
            return Ok(false);
        }
        match (&self.client, &token.publish) {
            (Client::V5(c), AckPublish::V5(p)) => c
                .ack(p)
                .await
                .map_err(|e| SourceError::Closed(e.to_string()))?,
            (Client::V311(c), AckPublish::V311(p)) => c
                .ack(p)
                .await
                .map_err(|e| SourceError::Closed(e.to_string()))?,
            _ => unreachable!("tokens come from this source's own protocol"),
        }
        Ok(true)
    }

    /// Disconnect cleanly (the session, and anything unacknowledged, stays at the broker).
    pub async fn disconnect(&self) {
        self.stopping.store(true, Ordering::Release);
        let r = match &self.client {
            Client::V5(c) => c.disconnect().await.map_err(|e| e.to_string()),
            Client::V311(c) => c.disconnect().await.map_err(|e| e.to_string()),
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, "MQTT disconnect");
        }
    }
}

/// What both protocol loops share: the hand-off channel, connection numbering, and
/// reconnect backoff.
struct Link {
    subs: Vec<String>,
    tx: mpsc::Sender<Incoming>,
    connection: Arc<AtomicU64>,
    stopping: Arc<AtomicBool>,
    failures: u32,
}

impl Link {
    fn connected(&mut self, protocol: &str, session_present: bool) {
        self.failures = 0;
        let n = self.connection.fetch_add(1, Ordering::AcqRel) + 1;
        tracing::info!(connection = n, session_present, "MQTT {protocol} connected");
    }

    fn subscribed(&self, codes: &dyn std::fmt::Debug) {
        tracing::info!(
            filters = self.subs.len(),
            ?codes,
            "MQTT subscriptions acknowledged"
        );
    }

    /// Hand a message on; `false` when the pipeline is gone.
    async fn deliver(&self, message: Message, dup: bool, publish: AckPublish) -> bool {
        let ack = AckToken {
            connection: self.connection.load(Ordering::Acquire),
            publish,
        };
        self.tx.send(Incoming { message, dup, ack }).await.is_ok()
    }

    /// The connection failed: `false` when stopping, else wait out a backoff and go on.
    async fn lost(&mut self, error: String) -> bool {
        if self.stopping.load(Ordering::Acquire) {
            return false;
        }
        let wait = backoff(self.failures);
        self.failures += 1;
        tracing::warn!(%error, retry_in = ?wait, "MQTT connection lost; reconnecting");
        tokio::time::sleep(wait).await;
        true
    }
}

async fn run_v5(
    mut eventloop: rumqttc::v5::EventLoop,
    client: rumqttc::v5::AsyncClient,
    mut link: Link,
) {
    use rumqttc::v5::Event;
    use rumqttc::v5::mqttbytes::{QoS, v5::Filter};
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(V5Packet::ConnAck(ack))) => {
                link.connected("5", ack.session_present);
                let filters = link
                    .subs
                    .iter()
                    .map(|s| Filter::new(s.clone(), QoS::AtLeastOnce));
                if let Err(e) = client.subscribe_many(filters).await {
                    tracing::error!(error = %e, "cannot subscribe");
                }
            }
            Ok(Event::Incoming(V5Packet::Publish(mut p))) => {
                let props = p.properties.take().unwrap_or_default();
                let message = Message {
                    topic: String::from_utf8_lossy(&p.topic).into_owned(),
                    payload: std::mem::take(&mut p.payload).to_vec(),
                    properties: props.user_properties,
                    content_type: props.content_type,
                    received_at_ms: now_ms(),
                };
                if !link.deliver(message, p.dup, AckPublish::V5(p)).await {
                    return;
                }
            }
            Ok(Event::Incoming(V5Packet::SubAck(ack))) => link.subscribed(&ack.return_codes),
            Ok(Event::Incoming(V5Packet::Disconnect(d))) => {
                tracing::warn!(reason = ?d.reason_code, "broker disconnected weir");
            }
            Ok(_) => {}
            Err(rumqttc::v5::ConnectionError::RequestsDone) => return,
            Err(e) => {
                if !link.lost(e.to_string()).await {
                    return;
                }
            }
        }
    }
}

async fn run_v311(mut eventloop: rumqttc::EventLoop, client: rumqttc::AsyncClient, mut link: Link) {
    use rumqttc::{Event, Packet, QoS, SubscribeFilter};
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                link.connected("3.1.1", ack.session_present);
                let filters = link
                    .subs
                    .iter()
                    .map(|s| SubscribeFilter::new(s.clone(), QoS::AtLeastOnce));
                if let Err(e) = client.subscribe_many(filters).await {
                    tracing::error!(error = %e, "cannot subscribe");
                }
            }
            Ok(Event::Incoming(Packet::Publish(mut p))) => {
                let message = Message {
                    topic: p.topic.clone(),
                    payload: std::mem::take(&mut p.payload).to_vec(),
                    properties: Vec::new(),
                    content_type: None,
                    received_at_ms: now_ms(),
                };
                if !link.deliver(message, p.dup, AckPublish::V311(p)).await {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => link.subscribed(&ack.return_codes),
            Ok(_) => {}
            Err(rumqttc::ConnectionError::RequestsDone) => return,
            Err(e) => {
                if !link.lost(e.to_string()).await {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_backoff() {
        assert_eq!(
            host_port("mqtt://127.0.0.1:1884").unwrap(),
            ("127.0.0.1".into(), 1884)
        );
        assert_eq!(host_port("mqtt://broker").unwrap(), ("broker".into(), 1883));
        assert!(host_port("mqtts://b:8883").is_err());
        assert!(host_port("mqtt://b:port").is_err());
        for n in 0..20 {
            let d = backoff(n);
            assert!(
                d >= Duration::from_millis(50) && d <= Duration::from_millis(15_000),
                "{d:?}"
            );
        }
    }
}
