//! `weir registry serve` as a process: acknowledged writes survive `kill -9` mid-stream.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

fn serve(data: &std::path::Path) -> (Child, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(["registry", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data);
    spawn_serve(cmd)
}

/// Start a `registry serve` command; the child and the URL from its first line.
fn spawn_serve(mut cmd: Command) -> (Child, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("schema registry listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_owned();
    (child, url)
}

fn schema(i: usize) -> String {
    serde_json::json!({"schema": serde_json::json!({
        "type": "record", "name": format!("R{i}"), "fields": [{"name": "f", "type": "long"}]
    }).to_string()})
    .to_string()
}

#[test]
fn acknowledged_registrations_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = serve(dir.path());
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..4 {
        let (url, acked) = (url.clone(), acked.clone());
        writers.push(std::thread::spawn(move || {
            let client = reqwest::blocking::Client::new();
            for i in 0.. {
                let subject = format!("s{w}-{i}");
                let resp = client
                    .post(format!("{url}/subjects/{subject}/versions"))
                    .header("content-type", "application/vnd.schemaregistry.v1+json")
                    .body(schema(w * 1_000_000 + i))
                    .send();
                match resp {
                    Ok(r) if r.status().is_success() => {
                        let id = r.json::<serde_json::Value>().unwrap()["id"]
                            .as_u64()
                            .unwrap();
                        acked.lock().unwrap().push((subject, id));
                    }
                    _ => return, // the server is gone
                }
            }
        }));
    }
    while acked.lock().unwrap().len() < 200 {
        std::thread::yield_now();
    }
    child.kill().unwrap(); // SIGKILL, mid-stream
    child.wait().unwrap();
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let (mut child, url) = serve(dir.path());
    let client = reqwest::blocking::Client::new();
    for (subject, id) in &acked {
        let v: serde_json::Value = client
            .get(format!("{url}/subjects/{subject}/versions/1"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(
            v["id"].as_u64(),
            Some(*id),
            "{subject} lost or changed after restart: {v}"
        );
    }
    // The registry still takes writes, and ids keep increasing.
    let max = acked.iter().map(|(_, id)| *id).max().unwrap();
    let r: serde_json::Value = client
        .post(format!("{url}/subjects/after/versions"))
        .header("content-type", "application/json")
        .body(schema(99_999_999))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(r["id"].as_u64().unwrap() > max);
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!(
        "{} acknowledged registrations survived kill -9",
        acked.len()
    );
}

#[test]
fn config_and_deletions_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = serve(dir.path());
    let c = reqwest::blocking::Client::new();
    let send = |m: reqwest::Method, path: &str, body: Option<String>| {
        let mut r = c.request(m, format!("{url}{path}"));
        if let Some(b) = body {
            r = r.header("content-type", "application/json").body(b);
        }
        assert!(r.send().unwrap().status().is_success(), "{path}");
    };
    send(
        reqwest::Method::POST,
        "/subjects/a/versions",
        Some(schema(1)),
    );
    send(
        reqwest::Method::POST,
        "/subjects/b/versions",
        Some(schema(2)),
    );
    send(
        reqwest::Method::PUT,
        "/config",
        Some(r#"{"compatibility":"FULL"}"#.into()),
    );
    send(
        reqwest::Method::PUT,
        "/config/a",
        Some(r#"{"compatibility":"NONE"}"#.into()),
    );
    send(reqwest::Method::DELETE, "/subjects/b", None);
    child.kill().unwrap();
    child.wait().unwrap();

    let (mut child, url) = serve(dir.path());
    let get = |path: &str| -> serde_json::Value {
        c.get(format!("{url}{path}"))
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    assert_eq!(get("/config")["compatibilityLevel"], "FULL");
    assert_eq!(get("/config/a")["compatibilityLevel"], "NONE");
    assert_eq!(get("/subjects"), serde_json::json!(["a"]));
    assert_eq!(get("/subjects?deleted=true"), serde_json::json!(["a", "b"]));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_second_registry_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut first, _) = serve(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["registry", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    first.kill().unwrap();
    first.wait().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("in use by another registry process"), "{err}");
    assert!(err.contains("--data-dir"), "says the fix: {err}");
}

#[test]
fn a_failed_append_is_rolled_back_and_every_acknowledged_schema_survives() {
    let dir = tempfile::tempdir().unwrap();
    // A 64 KiB file-size limit (SIGXFSZ ignored, so writes past it fail with EFBIG).
    let mut cmd = Command::new("bash");
    cmd.args([
        "-c",
        r#"trap "" XFSZ; ulimit -f 64; exec "$0" registry serve --listen 127.0.0.1:0 --data-dir "$1""#,
    ])
    .arg(env!("CARGO_BIN_EXE_weir"))
    .arg(dir.path());
    let (mut child, url) = spawn_serve(cmd);
    let client = reqwest::blocking::Client::new();
    let mut acked = Vec::new();
    let mut failures = 0;
    for i in 0..5000 {
        let subject = format!("s{i}");
        let r = client
            .post(format!("{url}/subjects/{subject}/versions"))
            .header("content-type", "application/json")
            .body(schema(i))
            .send()
            .unwrap();
        if r.status().is_success() {
            assert_eq!(
                failures, 0,
                "a write succeeded after a failed one left damage"
            );
            acked.push((
                subject,
                r.json::<serde_json::Value>().unwrap()["id"]
                    .as_u64()
                    .unwrap(),
            ));
        } else {
            assert_eq!(r.status().as_u16(), 500);
            let body: serde_json::Value = r.json().unwrap();
            assert_eq!(body["error_code"], 50001, "{body}");
            failures += 1;
            if failures == 3 {
                break;
            }
        }
    }
    assert!(
        failures == 3 && !acked.is_empty(),
        "the limit was reached after {} writes",
        acked.len()
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let size = std::fs::metadata(dir.path().join("registry.log"))
        .unwrap()
        .len();
    assert!(
        size <= 64 * 1024,
        "the failed appends were rolled back ({size} bytes)"
    );

    let (mut child, url) = serve(dir.path());
    for (subject, id) in &acked {
        let v: serde_json::Value = client
            .get(format!("{url}/subjects/{subject}/versions/1"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(v["id"].as_u64(), Some(*id), "{subject}: {v}");
    }
    let r = client
        .post(format!("{url}/subjects/later/versions"))
        .header("content-type", "application/json")
        .body(schema(777_777))
        .send()
        .unwrap();
    assert!(r.status().is_success());
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!(
        "{} acknowledged registrations kept after failed appends",
        acked.len()
    );
}
