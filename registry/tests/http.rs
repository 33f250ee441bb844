//! The registry's REST API, endpoint by endpoint, over a real loopback socket.

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const CT: &str = "application/vnd.schemaregistry.v1+json";

struct Server {
    url: String,
    client: Client,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start() -> Server {
    start_with(weir_registry::ApiConfig::default()).await
}

async fn start_with(config: weir_registry::ApiConfig) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let data = dir.path().to_path_buf();
    tokio::spawn(async move {
        weir_registry::serve(listener, &data, config, async {
            stopped.await.ok();
        })
        .await
        .unwrap();
    });
    Server {
        url,
        client: Client::new(),
        _dir: dir,
        _stop: stop,
    }
}

impl Server {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.url));
        if let Some(b) = body {
            req = req.header("content-type", CT).body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }
    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }
    async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }
    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::DELETE, path, None).await
    }
}

fn record(fields: Value) -> Value {
    json!({"schema": json!({"type": "record", "name": "Reading", "namespace": "t", "fields": fields}).to_string()})
}

fn v1() -> Value {
    record(json!([{"name": "id", "type": "string"}]))
}
/// v1 + an optional field with a default: backward and forward compatible.
fn v2() -> Value {
    record(
        json!([{"name": "id", "type": "string"}, {"name": "c", "type": ["null", "double"], "default": null}]),
    )
}
/// A new required field: not backward compatible.
fn v_required() -> Value {
    record(json!([{"name": "id", "type": "string"}, {"name": "n", "type": "long"}]))
}

fn code(v: &Value) -> u64 {
    v["error_code"]
        .as_u64()
        .unwrap_or_else(|| panic!("no error_code in {v}"))
}

#[tokio::test]
async fn register_get_and_lookup() {
    let s = start().await;
    assert_eq!(s.get("/").await, (StatusCode::OK, json!({})));
    assert_eq!(s.get("/health").await.1["status"], "UP");
    assert_eq!(s.get("/schemas/types").await.1, json!(["AVRO"]));
    assert_eq!(s.get("/subjects").await.1, json!([]));

    let (st, r) = s.post("/subjects/readings-value/versions", v1()).await;
    assert_eq!(st, StatusCode::OK);
    let id = r["id"].as_u64().unwrap();
    // Same schema again (even reformatted): same id, no new version.
    let reformatted = json!({"schema": serde_json::to_string_pretty(&serde_json::from_str::<Value>(v1()["schema"].as_str().unwrap()).unwrap()).unwrap()});
    assert_eq!(
        s.post("/subjects/readings-value/versions", reformatted)
            .await
            .1["id"],
        id
    );
    assert_eq!(
        s.get("/subjects/readings-value/versions").await.1,
        json!([1])
    );

    // Same schema under another subject: same global id, version 1 there.
    assert_eq!(
        s.post("/subjects/other-value/versions", v1()).await.1["id"],
        id
    );
    assert_eq!(
        s.get("/subjects").await.1,
        json!(["other-value", "readings-value"])
    );

    let id2 = s.post("/subjects/readings-value/versions", v2()).await.1["id"]
        .as_u64()
        .unwrap();
    assert_ne!(id, id2);
    let (st, latest) = s.get("/subjects/readings-value/versions/latest").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(latest["version"], 2);
    assert_eq!(latest["id"], id2);
    assert_eq!(latest["subject"], "readings-value");
    assert_eq!(
        s.get("/subjects/readings-value/versions/-1").await.1["version"],
        2
    );
    let (_, raw) = s.get("/subjects/readings-value/versions/1/schema").await;
    assert_eq!(raw["name"], "Reading");

    let (_, by_id) = s.get(&format!("/schemas/ids/{id}")).await;
    assert_eq!(
        serde_json::from_str::<Value>(by_id["schema"].as_str().unwrap()).unwrap()["fields"][0]["name"],
        "id"
    );
    assert_eq!(
        s.get(&format!("/schemas/ids/{id}/schema")).await.1["type"],
        "record"
    );
    assert_eq!(
        s.get(&format!("/schemas/ids/{id}/versions")).await.1,
        json!([{"subject": "other-value", "version": 1}, {"subject": "readings-value", "version": 1}])
    );

    let (st, found) = s.post("/subjects/readings-value", v2()).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        (found["version"].as_u64(), found["id"].as_u64()),
        (Some(2), Some(id2))
    );
}

#[tokio::test]
async fn every_error_code() {
    let s = start_with(weir_registry::ApiConfig {
        max_body_bytes: 4096,
        ..Default::default()
    })
    .await;
    s.post("/subjects/a/versions", v1()).await;

    let (st, e) = s.get("/subjects/nope/versions").await;
    assert_eq!((st, code(&e)), (StatusCode::NOT_FOUND, 40401));
    assert!(e["message"].as_str().unwrap().contains("nope"));
    assert_eq!(code(&s.get("/subjects/nope/versions/1").await.1), 40401);
    assert_eq!(code(&s.get("/subjects/a/versions/7").await.1), 40402);
    let (st, e) = s.get("/subjects/a/versions/zero").await;
    assert_eq!((st, code(&e)), (StatusCode::UNPROCESSABLE_ENTITY, 42202));
    assert_eq!(code(&s.get("/subjects/a/versions/0").await.1), 42202);
    assert_eq!(code(&s.get("/schemas/ids/999").await.1), 40403);
    assert_eq!(code(&s.post("/subjects/a", v2()).await.1), 40403);
    assert_eq!(code(&s.post("/subjects/nope", v1()).await.1), 40401);

    let (st, e) = s
        .post(
            "/subjects/a/versions",
            json!({"schema": "{\"type\": \"recrod\"}"}),
        )
        .await;
    assert_eq!((st, code(&e)), (StatusCode::UNPROCESSABLE_ENTITY, 42201));
    assert_eq!(
        code(
            &s.post("/subjects/a/versions", json!({"schema": "not json"}))
                .await
                .1
        ),
        42201
    );
    assert_eq!(
        code(
            &s.post(
                "/subjects/a/versions",
                json!({"schema": "\"string\"", "schemaType": "PROTOBUF"})
            )
            .await
            .1
        ),
        42201
    );
    let (st, e) = s.put("/config", json!({"compatibility": "SIDEWAYS"})).await;
    assert_eq!((st, code(&e)), (StatusCode::UNPROCESSABLE_ENTITY, 42203));

    let (st, e) = s.post("/subjects/a/versions", v_required()).await;
    assert_eq!((st, code(&e)), (StatusCode::CONFLICT, 409));
    assert!(
        e["message"].as_str().unwrap().contains("incompatible"),
        "{e}"
    );

    // Malformed requests.
    let resp = s
        .client
        .post(format!("{}/subjects/a/versions", s.url))
        .header("content-type", CT)
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(code(&resp.json::<Value>().await.unwrap()), 400);
    let resp = s
        .client
        .post(format!("{}/subjects/a/versions", s.url))
        .header("content-type", CT)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = s
        .client
        .post(format!("{}/subjects/a/versions", s.url))
        .header("content-type", "text/plain")
        .body(v1().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(code(&resp.json::<Value>().await.unwrap()), 415);
    let big = json!({"schema": format!("\"{}\"", "x".repeat(10_000))});
    let resp = s
        .client
        .post(format!("{}/subjects/a/versions", s.url))
        .header("content-type", CT)
        .body(big.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(code(&resp.json::<Value>().await.unwrap()), 413);
    let (st, e) = s.get("/no/such/route").await;
    assert_eq!((st, code(&e)), (StatusCode::NOT_FOUND, 404));

    // Deletion rules.
    assert_eq!(code(&s.delete("/subjects/a?permanent=true").await.1), 40405);
    assert_eq!(
        code(&s.delete("/subjects/a/versions/1?permanent=true").await.1),
        40407
    );
    assert_eq!(s.delete("/subjects/a/versions/1").await.1, json!(1));
    assert_eq!(code(&s.delete("/subjects/a/versions/1").await.1), 40406);
    s.post("/subjects/b/versions", v1()).await;
    s.delete("/subjects/b").await;
    assert_eq!(code(&s.delete("/subjects/b").await.1), 40404);
    assert_eq!(code(&s.get("/config/b").await.1), 40408);
    assert_eq!(code(&s.delete("/config/b").await.1), 40408);

    // Nothing above broke the server.
    assert_eq!(s.get("/subjects").await.0, StatusCode::OK);
}

#[tokio::test]
async fn deletes_soft_and_permanent() {
    let s = start().await;
    let id = s.post("/subjects/d/versions", v1()).await.1["id"].clone();
    s.post("/subjects/d/versions", v2()).await;
    assert_eq!(s.delete("/subjects/d/versions/2").await.1, json!(2));
    assert_eq!(s.get("/subjects/d/versions").await.1, json!([1]));
    assert_eq!(
        s.get("/subjects/d/versions?deleted=true").await.1,
        json!([1, 2])
    );
    assert_eq!(
        s.delete("/subjects/d/versions/2?permanent=true").await.1,
        json!(2)
    );
    assert_eq!(
        s.get("/subjects/d/versions?deleted=true").await.1,
        json!([1])
    );
    assert_eq!(s.delete("/subjects/d").await.1, json!([1]));
    assert_eq!(s.get("/subjects").await.1, json!([]));
    assert_eq!(s.get("/subjects?deleted=true").await.1, json!(["d"]));
    // The schema stays reachable by id (data written with it must stay decodable).
    assert_eq!(s.get(&format!("/schemas/ids/{id}")).await.0, StatusCode::OK);
    assert_eq!(s.delete("/subjects/d?permanent=true").await.1, json!([1]));
    assert_eq!(s.get("/subjects?deleted=true").await.1, json!([]));
    // Re-registering after deletion gives the same id back.
    assert_eq!(s.post("/subjects/d/versions", v1()).await.1["id"], id);
}

#[tokio::test]
async fn config_and_compatibility_modes() {
    let s = start().await;
    assert_eq!(
        s.get("/config").await.1,
        json!({"compatibilityLevel": "BACKWARD"})
    );
    assert_eq!(
        s.put("/config", json!({"compatibility": "full"})).await.1,
        json!({"compatibility": "FULL"})
    );
    assert_eq!(
        s.get("/config").await.1,
        json!({"compatibilityLevel": "FULL"})
    );
    s.put("/config", json!({"compatibility": "BACKWARD"})).await;

    s.post("/subjects/c/versions", v1()).await;
    assert_eq!(
        s.get("/config/c?defaultToGlobal=true").await.1,
        json!({"compatibilityLevel": "BACKWARD"})
    );
    // Compatibility checks, plain and verbose.
    assert_eq!(
        s.post("/compatibility/subjects/c/versions/latest", v2())
            .await
            .1,
        json!({"is_compatible": true})
    );
    let (_, verbose) = s
        .post(
            "/compatibility/subjects/c/versions/1?verbose=true",
            v_required(),
        )
        .await;
    assert_eq!(verbose["is_compatible"], false);
    assert!(!verbose["messages"].as_array().unwrap().is_empty());
    assert_eq!(
        code(
            &s.post("/compatibility/subjects/zz/versions/latest", v2())
                .await
                .1
        ),
        40401
    );

    // A required field is fine under FORWARD (old readers ignore it) but not BACKWARD.
    assert_eq!(
        s.put("/config/c", json!({"compatibility": "FORWARD"}))
            .await
            .1,
        json!({"compatibility": "FORWARD"})
    );
    assert_eq!(
        s.get("/config/c").await.1,
        json!({"compatibilityLevel": "FORWARD"})
    );
    assert_eq!(
        s.post("/subjects/c/versions", v_required()).await.0,
        StatusCode::OK
    );
    // NONE accepts anything.
    s.put("/config/c", json!({"compatibility": "NONE"})).await;
    let unrelated = json!({"schema": "\"string\""});
    assert_eq!(
        s.post("/subjects/c/versions", unrelated).await.0,
        StatusCode::OK
    );
    assert_eq!(
        s.delete("/config/c").await.1,
        json!({"compatibilityLevel": "NONE"})
    );
    assert_eq!(code(&s.get("/config/c").await.1), 40408);
}

#[tokio::test]
async fn transitive_modes_check_every_version() {
    let s = start().await;
    let f = |fields: Value| record(fields);
    // v1: {id}; v2: {id, a default 0}; v3: {id, a (no default)}:
    // v3 can read v2 data (a present) but not v1 data (a missing, no default).
    let v1 = f(json!([{"name": "id", "type": "string"}]));
    let v2 =
        f(json!([{"name": "id", "type": "string"}, {"name": "a", "type": "int", "default": 0}]));
    let v3 = f(json!([{"name": "id", "type": "string"}, {"name": "a", "type": "int"}]));
    for (subject, mode, v3_ok) in [
        ("plain", "BACKWARD", true),
        ("trans", "BACKWARD_TRANSITIVE", false),
    ] {
        s.put(
            &format!("/config/{subject}"),
            json!({"compatibility": mode}),
        )
        .await;
        assert_eq!(
            s.post(&format!("/subjects/{subject}/versions"), v1.clone())
                .await
                .0,
            StatusCode::OK
        );
        assert_eq!(
            s.post(&format!("/subjects/{subject}/versions"), v2.clone())
                .await
                .0,
            StatusCode::OK
        );
        let st = s
            .post(&format!("/subjects/{subject}/versions"), v3.clone())
            .await
            .0;
        assert_eq!(st == StatusCode::OK, v3_ok, "{mode}");
    }
    // FULL_TRANSITIVE refuses what FULL would take when an older version disagrees.
    for (subject, mode, ok) in [("full", "FULL", true), ("fullt", "FULL_TRANSITIVE", false)] {
        s.put(
            &format!("/config/{subject}"),
            json!({"compatibility": mode}),
        )
        .await;
        s.post(&format!("/subjects/{subject}/versions"), v1.clone())
            .await;
        s.post(&format!("/subjects/{subject}/versions"), v2.clone())
            .await;
        let st = s
            .post(&format!("/subjects/{subject}/versions"), v3.clone())
            .await
            .0;
        assert_eq!(st == StatusCode::OK, ok, "{mode}");
    }
    // FORWARD_TRANSITIVE: every old version must read the new data.
    s.put("/config/ft", json!({"compatibility": "FORWARD_TRANSITIVE"}))
        .await;
    s.post("/subjects/ft/versions", v3.clone()).await;
    s.post("/subjects/ft/versions", v2.clone()).await;
    // v1 readers can read anything with an `id`; removing `id` breaks all of them.
    let no_id = f(json!([{"name": "a", "type": "int"}]));
    assert_eq!(
        s.post("/subjects/ft/versions", no_id).await.0,
        StatusCode::CONFLICT
    );
}

#[tokio::test]
async fn parallel_registrations_of_one_schema_get_one_id() {
    let s = start().await;
    let mut tasks = Vec::new();
    for i in 0..32 {
        let client = s.client.clone();
        let url = format!("{}/subjects/p{}/versions", s.url, i % 4);
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .header("content-type", CT)
                .body(v1().to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<Value>().await.unwrap()["id"].as_u64().unwrap()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    for p in 0..4 {
        assert_eq!(
            s.get(&format!("/subjects/p{p}/versions")).await.1,
            json!([1])
        );
    }
}

#[tokio::test]
async fn a_post_without_a_json_content_type_is_refused() {
    let s = start().await;
    // What a browser sends cross-origin without asking first: no type, or a form/text type.
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut req = s
            .client
            .post(format!("{}/subjects/csrf/versions", s.url))
            .body(v1().to_string());
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct:?}");
    }
    assert_eq!(s.get("/subjects").await.1, json!([]));
}

#[tokio::test]
async fn credentials_are_required_when_configured() {
    let credentials =
        weir_registry::auth::Credentials::parse("basic ci:pw\nbearer deploy-token").unwrap();
    let s = start_with(weir_registry::ApiConfig {
        credentials: Some(credentials),
        ..Default::default()
    })
    .await;
    let url = format!("{}/subjects/a/versions", s.url);
    let send = |auth: Option<&'static str>| {
        let mut req = s
            .client
            .post(&url)
            .header("content-type", CT)
            .body(v1().to_string());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    let denied = send(None).await.unwrap();
    assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
    assert!(denied.headers().contains_key("www-authenticate"));
    assert_eq!(code(&denied.json::<Value>().await.unwrap()), 401);
    assert_eq!(
        send(Some("Bearer wrong")).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(Some("Bearer deploy-token")).await.unwrap().status(),
        StatusCode::OK
    );
    let basic = s
        .client
        .get(format!("{}/subjects", s.url))
        .basic_auth("ci", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::OK);
    assert_eq!(basic.json::<Value>().await.unwrap(), json!(["a"]));
    assert_eq!(s.get("/subjects").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(s.get("/health").await.0, StatusCode::OK);
}

/// Send a request whose body never finishes; keeps the connection open.
async fn stalled_body(url: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let addr = url.trim_start_matches("http://");
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /subjects/slow/versions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: {CT}\r\ncontent-length: 1000\r\n\r\n{{\"schema\":"
    );
    c.write_all(head.as_bytes()).await.unwrap();
    c
}

#[tokio::test]
async fn slow_bodies_hold_no_permit() {
    let s = start_with(weir_registry::ApiConfig {
        max_concurrent: 1,
        body_timeout: std::time::Duration::from_secs(120),
        ..Default::default()
    })
    .await;
    // More stalled senders than permits: the registry still answers others meanwhile
    // (were a permit taken before the body, this request would wait out the 120 s).
    let mut stalled = Vec::new();
    for _ in 0..4 {
        stalled.push(stalled_body(&s.url).await);
    }
    let fast = s
        .client
        .post(format!("{}/subjects/fast/versions", s.url))
        .header("content-type", CT)
        .body(v1().to_string())
        .timeout(std::time::Duration::from_secs(30))
        .send()
        .await
        .expect("answered while others stall");
    assert_eq!(fast.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_answered_408() {
    use tokio::io::AsyncReadExt;
    let s = start_with(weir_registry::ApiConfig {
        body_timeout: std::time::Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let mut c = stalled_body(&s.url).await;
    let mut answer = vec![0u8; 512];
    let n = c.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(s.get("/subjects").await.1, json!([]));
}

/// Records nested `depth` deep, each with two fields of the next record type.
fn shared_tower(depth: usize, leaf: &str) -> String {
    let mut schema = json!({"type": "record", "name": format!("R{depth}"), "fields": [{"name": "x", "type": leaf}]});
    for level in (0..depth).rev() {
        schema = json!({"type": "record", "name": format!("R{level}"), "fields": [
            {"name": "a", "type": schema}, {"name": "b", "type": format!("R{}", level + 1)}]});
    }
    schema.to_string()
}

#[tokio::test]
async fn a_schema_of_shared_types_nested_deep_is_checked_without_blowing_up() {
    let s = start().await;
    let old = json!({"schema": shared_tower(40, "int")});
    let new = json!({"schema": shared_tower(40, "string")});
    assert_eq!(
        s.post("/subjects/tower/versions", old).await.0,
        StatusCode::OK
    );
    let (st, e) = s.post("/subjects/tower/versions", new).await;
    assert_eq!((st, code(&e)), (StatusCode::CONFLICT, 409), "{e}");
    assert!(e["message"].as_str().unwrap().len() < 100_000);
}

/// A union of `n` records of `n` fields each: checking one against another compares every
/// branch with every branch, up to the registry's bound on the work of one check.
fn costly_union(n: usize, leaf: &str) -> String {
    let branches: Vec<Value> = (0..n)
        .map(|i| {
            let fields: Vec<Value> = (0..n)
                .map(|f| json!({"name": format!("f{f}"), "type": leaf}))
                .collect();
            json!({"type": "record", "name": format!("B{i}"), "fields": fields})
        })
        .collect();
    Value::Array(branches).to_string()
}

/// A compatibility check as costly as the registry allows holds no lock that other
/// requests need: while such checks run one after another, reads are answered in a small
/// part of one check's time (they used to wait for the check to end).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn other_requests_are_answered_while_a_costly_check_runs() {
    let s = std::sync::Arc::new(start().await);
    assert_eq!(
        s.post(
            "/subjects/costly/versions",
            json!({"schema": costly_union(200, "int")})
        )
        .await
        .0,
        StatusCode::OK
    );
    let heavy = json!({"schema": costly_union(200, "long")});
    let checks = 4;
    let checking = {
        let s = s.clone();
        tokio::spawn(async move {
            let mut took = Vec::new();
            for _ in 0..checks {
                let started = std::time::Instant::now();
                let (status, e) = s
                    .post(
                        "/compatibility/subjects/costly/versions/latest",
                        heavy.clone(),
                    )
                    .await;
                took.push(started.elapsed());
                assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
            }
            took
        })
    };
    let mut reads = Vec::new();
    while !checking.is_finished() {
        let started = std::time::Instant::now();
        let (status, _) = s.get("/subjects/costly/versions").await;
        assert_eq!(status, StatusCode::OK);
        reads.push(started.elapsed());
    }
    let took = checking.await.unwrap();
    let check = took.iter().sum::<std::time::Duration>() / checks;
    assert!(
        check >= std::time::Duration::from_millis(40),
        "the check is too cheap here ({check:?}) to show anything"
    );
    reads.sort();
    let slowest = reads.last().copied().unwrap_or_default();
    assert!(
        reads.len() >= 3 && slowest < check / 2,
        "{} reads during {checks} checks of {check:?} each; the slowest took {slowest:?}",
        reads.len()
    );
}
