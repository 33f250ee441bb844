//! The admin listener under a flood of idle connections: the API still answers, and the
//! listener holds a bounded number of them (each open connection is a file descriptor weir
//! also needs for MQTT reconnects and Kafka sockets).

mod bed;

use bed::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

const IDLE: usize = 5_000;

/// Let this test process open `n` more descriptors (the client side of a flood).
fn allow_descriptors(n: usize) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let want = (n as u64 + 1_000).min(limit.maximum.unwrap_or(u64::MAX));
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(want),
            maximum: limit.maximum,
        },
    )
    .unwrap();
    assert!(
        want > n as u64,
        "the hard file limit ({limit:?}) is too low for this test"
    );
}

/// Hold a running weir to `n` open files (its soft limit), as under the common default of
/// 1,024, whatever this test process was allowed: without a connection cap, the flood
/// alone would take every descriptor weir has.
fn limit_descriptors(weir: &Weir, n: u64) {
    use rustix::process::{Pid, Resource, Rlimit, getrlimit, prlimit};
    let pid = Pid::from_raw(weir.child.id() as i32).expect("a process id");
    let hard = getrlimit(Resource::Nofile).maximum;
    prlimit(
        Some(pid),
        Resource::Nofile,
        Rlimit {
            current: Some(n),
            maximum: hard,
        },
    )
    .expect("prlimit on weir");
}

#[test]
fn five_thousand_idle_connections_do_not_lock_out_the_api() {
    allow_descriptors(IDLE);

    let config = weir::config::Config::parse(
        "weir.toml",
        r#"
[mqtt]
url = "mqtt://127.0.0.1:1"
subscriptions = ["plant/#"]
[kafka]
bootstrap = "127.0.0.1:1"
[registry]
url = "http://127.0.0.1:1"
[plugins]
dir = "plugins"
[[cohort]]
name = "t"
topic = "plant/+/thermostat/+"
plugin = "thermostat@1.0.0"
output_topic = "telemetry.thermostat"
"#,
        &[],
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let listener = weir::admin::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tokens = weir::admin::Tokens::new(&config.admin).unwrap();
        let metrics = Arc::new(weir::metrics::Metrics::new());
        let _server = weir::admin::spawn(listener, None, metrics, None, tokens).unwrap();

        let mut idle = Vec::with_capacity(IDLE);
        for _ in 0..IDLE {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // A real request, on a connection of its own, is answered.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let healthz = client
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .expect("/healthz answers while thousands of connections sit idle");
        assert_eq!(healthz.status(), 200);
        let v1 = client
            .get(format!("http://{addr}/v1/cohorts"))
            .send()
            .await
            .expect("/v1 answers while thousands of connections sit idle");
        assert_ne!(v1.status(), 403);
        // The listener closed idle connections to make room: it holds at most its cap.
        let started = std::time::Instant::now();
        let open = loop {
            let open = idle
                .iter()
                .filter(|c| {
                    let mut b = [0u8; 1];
                    !matches!(c.try_read(&mut b), Ok(0))
                })
                .count();
            if open <= weir::admin::listener::MAX_CONNECTIONS
                || started.elapsed() > Duration::from_secs(10)
            {
                break open;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            open <= weir::admin::listener::MAX_CONNECTIONS,
            "{open} idle connections still open"
        );
    });
}

/// The same flood against `weir run` while devices publish: ingest goes on (weir's MQTT
/// and Kafka sockets need descriptors too), the API answers, and nothing is lost.
#[test]
fn an_admin_flood_during_ingest_stalls_nothing() {
    allow_descriptors(IDLE);
    let p = unique("adminflood");
    let weir = Weir::start(&config(&p), &[]);
    limit_descriptors(&weir, 1024);
    let devices = 4;
    let load = Load::start(&p, &format!("{p}-pub"), devices);
    load.wait_sent(200);
    let addr: std::net::SocketAddr = weir.admin.trim_start_matches("http://").parse().unwrap();
    let mut idle = Vec::with_capacity(IDLE);
    // A listener that stopped accepting leaves connects waiting on SYN retries: each is
    // bounded, and so is the flood.
    let flood = Instant::now();
    for _ in 0..IDLE {
        if flood.elapsed() > Duration::from_secs(60) {
            break;
        }
        if let Ok(c) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            idle.push(c);
        }
    }
    let acked = |w: &Weir| {
        w.metrics()
            .lines()
            .find_map(|l| l.strip_prefix("weir_acked_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // While the connections are open, messages go on being acknowledged and the API
    // answers.
    let before = acked(&weir);
    wait_until(
        "ingest goes on under the admin flood",
        Duration::from_secs(30),
        || weir.metrics(),
        || acked(&weir) >= before + 400.0,
    );
    let (status, _) = http_get(&format!("{}/v1/cohorts", weir.admin)).expect("the API answers");
    assert_eq!(status, 200);
    assert!(
        idle.len() >= IDLE / 2,
        "only {} flood connections were accepted",
        idle.len()
    );
    let (rounds, records) = load.finish_after(200, &p, devices);
    assert_eq!(readings(&records).len(), rounds * devices, "nothing lost");
    drop(idle);
}
