//! The admin listener's connections, served one task each. A shared listener must hold
//! against clients that open connections and send nothing: weir's file descriptors are also
//! its MQTT reconnects and new Kafka sockets.
//!
//! - At most [`MAX_CONNECTIONS`] are open. When a new one arrives at the cap, the connection
//!   idle the longest (no request in progress) is closed to make room, so idle clients
//!   cannot lock out a real request; if every connection is busy, the new one is closed.
//! - A request's head must arrive within [`HEADER_TIMEOUT`], on a new connection and
//!   between requests on a kept-alive one.

use axum::Router;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

/// Connections open at once, at most.
pub const MAX_CONNECTIONS: usize = 256;
/// Longest a client may take to send a request's head (and to start the next one).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// One open connection, as the table sees it.
struct Entry {
    id: u64,
    /// Requests in progress.
    busy: usize,
    /// When it last had none in progress (or was opened).
    idle_since: Instant,
    evict: Arc<Notify>,
}

/// The open connections.
#[derive(Default)]
struct Table {
    next: u64,
    open: Vec<Entry>,
}

impl Table {
    /// Make room for one more: `Err` when every connection is busy and the cap reached.
    fn admit(&mut self, cap: usize) -> Result<(u64, Arc<Notify>), ()> {
        if self.open.len() >= cap {
            let oldest = self
                .open
                .iter()
                .enumerate()
                .filter(|(_, e)| e.busy == 0)
                .min_by_key(|(_, e)| e.idle_since)
                .map(|(i, _)| i)
                .ok_or(())?;
            let e = self.open.swap_remove(oldest);
            e.evict.notify_one();
        }
        self.next += 1;
        let evict = Arc::new(Notify::new());
        self.open.push(Entry {
            id: self.next,
            busy: 0,
            idle_since: Instant::now(),
            evict: evict.clone(),
        });
        Ok((self.next, evict))
    }

    fn mark(&mut self, id: u64, started: bool) {
        if let Some(e) = self.open.iter_mut().find(|e| e.id == id) {
            if started {
                e.busy += 1;
            } else {
                e.busy = e.busy.saturating_sub(1);
                if e.busy == 0 {
                    e.idle_since = Instant::now();
                }
            }
        }
    }

    fn close(&mut self, id: u64) {
        self.open.retain(|e| e.id != id);
    }
}

/// Serve `app` on the connections that arrive on `incoming`, until it closes.
pub async fn serve<Io>(mut incoming: mpsc::Receiver<(Io, SocketAddr)>, app: Router)
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let table = Arc::new(Mutex::new(Table::default()));
    while let Some((io, peer)) = incoming.recv().await {
        let admitted = table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(MAX_CONNECTIONS);
        let Ok((id, evict)) = admitted else {
            tracing::debug!(%peer, "admin: every connection is busy; closing a new one");
            continue;
        };
        let (table, app) = (table.clone(), app.clone());
        tokio::spawn(async move {
            let marks = table.clone();
            let service =
                tower::service_fn(move |req: axum::extract::Request<hyper::body::Incoming>| {
                    let (marks, app) = (marks.clone(), app.clone());
                    async move {
                        marks
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .mark(id, true);
                        let response =
                            tower::ServiceExt::oneshot(app, req.map(axum::body::Body::new)).await;
                        marks
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .mark(id, false);
                        response
                    }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(
                    hyper_util::rt::TokioIo::new(io),
                    hyper_util::service::TowerToHyperService::new(service),
                );
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "admin: connection ended");
                },
                () = evict.notified() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            table.lock().unwrap_or_else(|p| p.into_inner()).close(id);
        });
    }
}

/// Plain TCP connections from `listener`, for [`serve`]. Accept errors (out of file
/// descriptors, say) wait a moment rather than spin.
pub fn accept_tcp(
    listener: tokio::net::TcpListener,
) -> (
    mpsc::Receiver<(tokio::net::TcpStream, SocketAddr)>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(1);
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok(c) => {
                    if tx.send(c).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin: cannot accept a connection");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    (rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn at_the_cap_the_longest_idle_connection_makes_room() {
        let mut t = Table::default();
        let (a, evict_a) = t.admit(2).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (_, evict_b) = t.admit(2).unwrap();
        t.mark(a, true);
        // a is busy, so b (idle) goes, though a is older.
        let (c, _) = t.admit(2).unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(1), evict_b.notified())
                .await
                .is_ok()
        );
        assert_eq!(t.open.iter().map(|e| e.id).collect::<Vec<_>>(), [a, c]);
        t.mark(c, true);
        assert!(
            t.admit(2).is_err(),
            "every connection busy: the new one is refused"
        );
        t.mark(a, false);
        t.admit(2).unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(1), evict_a.notified())
                .await
                .is_ok()
        );
        t.close(c);
        assert_eq!(t.open.len(), 1);
    }

    /// The header timeout on its own (the connection cap far away): a client that sends
    /// half a head, and one that goes quiet after a request on a kept-alive connection, are
    /// both closed once it passes, and a whole request is answered.
    #[tokio::test]
    async fn a_head_that_does_not_arrive_in_time_closes_the_connection() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (tx, rx) = mpsc::channel(4);
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        tokio::spawn(serve(rx, app));
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();

        let slow = async {
            let (mut client, server) = tokio::io::duplex(4096);
            tx.send((server, peer)).await.unwrap();
            client
                .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
                .await
                .unwrap();
            let started = Instant::now();
            let mut rest = Vec::new();
            tokio::time::timeout(HEADER_TIMEOUT * 3, client.read_to_end(&mut rest))
                .await
                .expect("a half-sent head is still open after 3× the header timeout")
                .unwrap();
            assert!(started.elapsed() >= HEADER_TIMEOUT - Duration::from_secs(1));
            assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
        };
        let quiet = async {
            let (mut client, server) = tokio::io::duplex(4096);
            tx.send((server, peer)).await.unwrap();
            client
                .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await
                .unwrap();
            let mut answer = vec![0u8; 1024];
            let n = client.read(&mut answer).await.unwrap();
            assert!(
                String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&answer[..n])
            );
            let started = Instant::now();
            let mut rest = Vec::new();
            tokio::time::timeout(HEADER_TIMEOUT * 3, client.read_to_end(&mut rest))
                .await
                .expect("a quiet kept-alive connection is still open after 3× the header timeout")
                .unwrap();
            assert!(started.elapsed() >= HEADER_TIMEOUT - Duration::from_secs(1));
        };
        tokio::join!(slow, quiet);
    }
}
