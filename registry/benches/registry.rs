//! Registrations per second and `GET /schemas/ids/{id}` lookups per second against a
//! server on loopback, with 8 concurrent HTTP/1.1 clients.
//! Run: `cargo bench -p weir-registry --bench registry`

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const CLIENTS: usize = 8;

fn schema(i: usize) -> String {
    serde_json::json!({"schema": serde_json::json!({
        "type": "record", "name": format!("R{i}"),
        "fields": [{"name": "id", "type": "string"}, {"name": "v", "type": ["null", "double"], "default": null}]
    }).to_string()})
    .to_string()
}

async fn run(url: &str, what: &str, dur: Duration, ids: usize) -> f64 {
    let counter = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (url, counter, what) = (url.to_owned(), counter.clone(), what.to_owned());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut i = 0usize;
            while start.elapsed() < dur {
                let resp = if what == "register" {
                    client
                        .post(format!("{url}/subjects/bench-{c}-{i}/versions"))
                        .header("content-type", "application/vnd.schemaregistry.v1+json")
                        .body(schema(c * 10_000_000 + i))
                        .send()
                        .await
                } else {
                    client
                        .get(format!("{url}/schemas/ids/{}", 1 + (i % ids)))
                        .send()
                        .await
                };
                assert!(resp.unwrap().status().is_success());
                counter.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    counter.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let data = dir.path().to_path_buf();
    tokio::spawn(async move {
        weir_registry::serve(listener, &data, Default::default(), std::future::pending())
            .await
            .unwrap()
    });
    let reg = run(&url, "register", Duration::from_secs(5), 0).await;
    let ids = reqwest::get(format!("{url}/subjects"))
        .await
        .unwrap()
        .json::<Vec<String>>()
        .await
        .unwrap()
        .len();
    let get = run(&url, "get", Duration::from_secs(5), ids).await;
    println!("{CLIENTS} clients, loopback, fsync per registration");
    println!("registrations/s (new schema each, fsynced): {reg:>10.0}");
    println!("GET /schemas/ids/{{id}} lookups/s:           {get:>10.0}");
}
