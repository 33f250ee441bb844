//! TLS and secrets against real brokers. Each test makes its own CA and certificates
//! (rcgen) and runs a mosquitto of its own (a plain listener for the test's publisher, a
//! TLS listener that requires client certificates, and one whose certificate has expired)
//! or an Apache Kafka of its own (SASL PLAIN and SCRAM over TLS, client certificates). The
//! registry is the test bed's.

mod bed;

use bed::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A CA that can sign certificates.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// (certificate PEM, key PEM) for `names`; expired when `expired`.
    fn issue(&self, cn: &str, names: &[&str], expired: bool) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// The files of one test's PKI.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// CA, server certificate (localhost, 127.0.0.1), expired server certificate, client
    /// certificate, and a second CA with a client certificate of its own.
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki { dir };
        let ca = Ca::new("weir test CA");
        let rogue = Ca::new("someone else's CA");
        pki.write("ca.pem", &ca.pem);
        pki.write("rogue-ca.pem", &rogue.pem);
        let pairs = [
            (
                "server",
                ca.issue("broker", &["localhost", "127.0.0.1"], false),
            ),
            (
                "expired",
                ca.issue("broker", &["localhost", "127.0.0.1"], true),
            ),
            ("client", ca.issue("weir", &["weir"], false)),
            ("rogue-client", rogue.issue("weir", &["weir"], false)),
            ("expired-client", ca.issue("weir", &["weir"], true)),
        ];
        for (name, (cert, key)) in pairs {
            pki.write(&format!("{name}.pem"), &cert);
            pki.write(&format!("{name}.key"), &key);
        }
        // mosquitto, started as root, drops to its own user: let it read the files.
        chmod(pki.dir.path(), 0o755);
        pki
    }

    fn write(&self, name: &str, text: &str) {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        chmod(&path, 0o644);
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A mosquitto of the test's own; killed when dropped.
struct Mosquitto {
    child: Child,
    plain: u16,
    tls: u16,
    expired: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Listeners: plain (anonymous), TLS requiring a client certificate from the test CA,
    /// TLS with an expired certificate. `extra` is added to the global settings.
    fn start(pki: &Pki, extra: &str) -> Mosquitto {
        Self::start_on(pki, extra, free_port())
    }

    /// As [`Mosquitto::start`], with the client-certificate TLS listener on `tls`.
    fn start_on(pki: &Pki, extra: &str, tls: u16) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        chmod(dir.path(), 0o755);
        let (plain, expired) = (free_port(), free_port());
        let p = |n: &str| pki.path(n).display().to_string();
        let conf = format!(
            "per_listener_settings false\n{extra}\nlog_dest stderr\nlog_type error\nlog_type warning\n\
             listener {plain} 127.0.0.1\n\
             listener {tls} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\nrequire_certificate true\n\
             listener {expired} 127.0.0.1\ncafile {ca}\ncertfile {xcert}\nkeyfile {xkey}\n",
            ca = p("ca.pem"),
            cert = p("server.pem"),
            key = p("server.key"),
            xcert = p("expired.pem"),
            xkey = p("expired.key"),
        );
        let path = dir.path().join("mosquitto.conf");
        std::fs::write(&path, conf).unwrap();
        chmod(&path, 0o644);
        let bin = if Path::new("/usr/sbin/mosquitto").exists() {
            "/usr/sbin/mosquitto"
        } else {
            "mosquitto"
        };
        let child = Command::new(bin)
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto runs");
        let m = Mosquitto {
            child,
            plain,
            tls,
            expired,
            _dir: dir,
        };
        for port in [plain, tls, expired] {
            wait_until(
                &format!("mosquitto listens on {port}"),
                Duration::from_secs(20),
                String::new,
                || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            );
        }
        m
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The standard test config with `[mqtt.tls]` set to `tls`. The broker's URL is given to
/// weir as `WEIR_MQTT_URL` (which the test bed's environment sets for every test).
fn tls_config(p: &str, tls: &str) -> String {
    format!("{}\n[mqtt.tls]\n{tls}\n", config(p))
}

fn client_files(pki: &Pki, ca: &str, client: &str) -> String {
    format!(
        "ca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}",
        pki.path(ca),
        pki.path(&format!("{client}.pem")),
        pki.path(&format!("{client}.key"))
    )
}

#[test]
fn mutual_tls_carries_messages() {
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, "allow_anonymous true");
    let p = unique("tls");
    let url = format!("mqtts://localhost:{}", broker.tls);
    let weir = Weir::start(
        &tls_config(&p, &client_files(&pki, "ca.pem", "client")),
        &[("WEIR_MQTT_URL", &url)],
    );
    let mut publisher = Publisher::at(
        &format!("mqtt://127.0.0.1:{}", broker.plain),
        &format!("{p}-pub"),
    );
    for i in 0..20 {
        publisher.publish(
            &format!("{p}/plant/1/thermostat/t-{i}"),
            format!(r#"{{"ts":{i},"temp_c":21}}"#),
            &[],
        );
    }
    publisher.flush();
    let got = count(&format!("{p}.thermostat"), 20, Duration::from_secs(60));
    assert_eq!(got, 20, "every message went through weir's TLS session");
    let (status, log) = weir.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn tls_failures_stop_start_up_with_the_cause() {
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, "allow_anonymous true");
    let p = unique("tlsbad");
    let good = format!("mqtts://localhost:{}", broker.tls);
    let cases = [
        (
            "a CA that did not issue the broker's certificate",
            good.clone(),
            client_files(&pki, "rogue-ca.pem", "client"),
            "not signed by a CA in mqtt.tls.ca_file",
        ),
        (
            "a name the certificate does not carry",
            good.clone(),
            format!(
                "{}\nserver_name = \"broker.example.com\"",
                client_files(&pki, "ca.pem", "client")
            ),
            "not valid for \"broker.example.com\"",
        ),
        (
            "an expired broker certificate",
            format!("mqtts://localhost:{}", broker.expired),
            client_files(&pki, "ca.pem", "client"),
            "has expired",
        ),
        (
            "a client certificate from another CA",
            good.clone(),
            client_files(&pki, "ca.pem", "rogue-client"),
            "refused weir's client certificate",
        ),
        (
            "an expired client certificate",
            good.clone(),
            client_files(&pki, "ca.pem", "expired-client"),
            "weir's client certificate (mqtt.tls.cert_file) has expired",
        ),
        (
            "a key that does not fit the certificate",
            good.clone(),
            format!(
                "ca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}",
                pki.path("ca.pem"),
                pki.path("client.pem"),
                pki.path("rogue-client.key")
            ),
            "does not fit mqtt.tls.cert_file",
        ),
    ];
    for (what, url, tls, want) in cases {
        let err = start_fails(&tls_config(&p, &tls), &[("WEIR_MQTT_URL", &url)]);
        assert!(err.contains(want), "{what}: expected {want:?} in:\n{err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
    }
    // A broker that hangs up without a TLS alert (mosquitto, to a client without a
    // certificate; a plain listener, to a ClientHello) may be a proxy whose backend is not
    // up yet: weir keeps trying, and its log says what to check.
    let hangups = [
        (
            "no client certificate",
            good.clone(),
            format!("ca_file = {:?}", pki.path("ca.pem")),
            "set mqtt.tls.cert_file and mqtt.tls.key_file",
        ),
        (
            "a plain listener",
            format!("mqtts://localhost:{}", broker.plain),
            client_files(&pki, "ca.pem", "client"),
            "TLS listener",
        ),
    ];
    for (what, url, tls, want) in hangups {
        let weir = Weir::launch(&tls_config(&p, &tls), &[("WEIR_MQTT_URL", &url)]);
        wait_until(
            &format!("{what}: {want:?} logged"),
            Duration::from_secs(30),
            || weir.log.lock().unwrap().clone(),
            || weir.log.lock().unwrap().contains(want),
        );
        assert_ne!(
            http_get(&format!("{}/readyz", weir.admin)).map(|r| r.0),
            Some(200),
            "{what}: not ready"
        );
    }
}

/// A password file's content is what weir logs in with, read again at every connection:
/// rotated on both sides, weir gets back in on its next reconnect; the password is never
/// in weir's output. (The broker wants a password from everyone here, so nothing is
/// published: being ready again means logged in and subscribed.)
#[test]
fn password_file_is_read_at_every_connection_and_never_shown() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    let passwd = dir.path().join("passwd");
    let set_broker_password = |pw: &str| {
        let ok = Command::new("mosquitto_passwd")
            .args(["-c", "-b"])
            .arg(&passwd)
            .args(["weir", pw])
            .status()
            .unwrap()
            .success();
        assert!(ok, "mosquitto_passwd");
        chmod(&passwd, 0o644);
    };
    let (first, second) = ("first-Secret-4711", "second-Secret-0815");
    set_broker_password(first);
    let extra = format!("allow_anonymous false\npassword_file {}", passwd.display());
    let broker = Mosquitto::start(&pki, &extra);
    let p = unique("secret");
    let secret_file = dir.path().join("mqtt-password");
    std::fs::write(&secret_file, format!("{first}\n")).unwrap();
    let url = format!("mqtts://localhost:{}", broker.tls);
    let env = [("WEIR_MQTT_URL", url.as_str())];
    let config = tls_config(&p, &client_files(&pki, "ca.pem", "client")).replace(
        "keep_alive_s = 10",
        &format!(
            "keep_alive_s = 10\nusername = \"weir\"\npassword_file = {:?}",
            secret_file
        ),
    );

    // A wrong password stops start-up, without showing either password.
    std::fs::write(&secret_file, "wrong-Secret-1234\n").unwrap();
    let err = start_fails(&config, &env);
    assert!(err.contains("refused the connection"), "{err}");
    assert!(!err.contains("wrong-Secret-1234"), "{err}");

    std::fs::write(&secret_file, format!("{first}\n")).unwrap();
    let weir = Weir::start(&config, &env);
    // Rotate: the broker restarts with the new password, weir's file has it too.
    set_broker_password(second);
    std::fs::write(&secret_file, format!("{second}\n")).unwrap();
    let port = broker.tls;
    drop(broker);
    let _broker = Mosquitto::start_on(&pki, &extra, port);
    let reconnects = |weir: &Weir| {
        weir.metrics()
            .lines()
            .find_map(|l| l.strip_prefix("weir_mqtt_reconnects_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    wait_until(
        "weir reconnects with the rotated password",
        Duration::from_secs(60),
        || weir.log.lock().unwrap().clone(),
        || reconnects(&weir) >= 1.0,
    );
    // Ready again: logged in with the new password and subscribed.
    weir.wait_ready(Duration::from_secs(30));
    let (_, log) = weir.stop();
    for pw in [first, second] {
        assert!(!log.contains(pw), "a password reached the log:\n{log}");
    }
}

/// The Kafka principal of the SASL tests.
const KAFKA_USER: &str = "weir";

/// An Apache Kafka of the test's own that clients reach over TLS with the test CA's server
/// certificate: SASL_SSL on `sasl` (PLAIN and both SCRAMs, [`KAFKA_USER`] knowing
/// `password` for each) and SSL requiring a client certificate from the test CA on `mtls`.
/// Its PLAINTEXT listener is for Kafka's own tools.
struct SecuredKafka {
    node: KafkaNode,
    sasl: u16,
    mtls: u16,
}

impl SecuredKafka {
    fn start(pki: &Pki, dir: &Path, password: &str) -> SecuredKafka {
        // A PEM key store: the private key (PKCS#8), then the certificate.
        let keystore = dir.join("broker-keystore.pem");
        let read = |name: &str| std::fs::read_to_string(pki.path(name)).unwrap();
        std::fs::write(
            &keystore,
            format!("{}{}", read("server.key"), read("server.pem")),
        )
        .unwrap();
        let (sasl, mtls) = (free_port(), free_port());
        let extra = format!(
            "listeners=PLAINTEXT://127.0.0.1:{{port}},CONTROLLER://127.0.0.1:{{controller_port}},SASL_SSL://127.0.0.1:{sasl},SSL://127.0.0.1:{mtls}
advertised.listeners=PLAINTEXT://127.0.0.1:{{port}},SASL_SSL://localhost:{sasl},SSL://localhost:{mtls}
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_{KAFKA_USER}=\"{password}\";
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PEM
ssl.keystore.location={keystore}
ssl.truststore.type=PEM
ssl.truststore.location={ca}
listener.name.ssl.ssl.client.auth=required
",
            keystore = keystore.display(),
            ca = pki.path("ca.pem").display(),
        );
        let scram: Vec<String> = ["SCRAM-SHA-256", "SCRAM-SHA-512"]
            .iter()
            .map(|m| format!("{m}=[name={KAFKA_USER},password={password}]"))
            .collect();
        let scram: Vec<&str> = scram.iter().map(String::as_str).collect();
        SecuredKafka {
            node: KafkaNode::single(dir, &extra, &scram),
            sasl,
            mtls,
        }
    }

    /// Give [`KAFKA_USER`] a new password for `mechanism`, as an operator would
    /// (`kafka-configs --alter`).
    fn set_password(&self, mechanism: &str, password: &str) {
        kafka_tool(
            "org.apache.kafka.tools.ConfigCommand",
            &[
                "--bootstrap-server",
                &self.node.bootstrap(),
                "--alter",
                "--entity-type",
                "users",
                "--entity-name",
                KAFKA_USER,
                "--add-config",
                &format!("{mechanism}=[password={password}]"),
            ],
        );
    }
}

/// A reader's settings for the test's own broker (its PLAINTEXT listener).
fn reader(kafka: &SecuredKafka) -> Vec<(&'static str, String)> {
    vec![("bootstrap.servers", kafka.node.bootstrap())]
}

fn each<'a>(settings: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    settings.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Publish thermostat readings `from..from + n` and wait for the broker's PUBACKs.
fn publish_readings(publisher: &mut Publisher, p: &str, from: usize, n: usize) {
    for i in from..from + n {
        publisher.publish(
            &format!("{p}/plant/1/thermostat/t-{i}"),
            format!(r#"{{"ts":{i},"temp_c":21}}"#),
            &[],
        );
    }
    publisher.flush();
}

/// weir writes to a Kafka that speaks only TLS and wants SASL logins, with SCRAM-SHA-512
/// and with PLAIN: the records arrive; a wrong password or an untrusted broker certificate
/// stops start-up with the cause.
#[test]
fn kafka_over_tls_with_scram_and_plain() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (user, password) = (KAFKA_USER, "kafka-Secret-2718");
    let broker = SecuredKafka::start(&pki, dir.path(), password);
    let bootstrap = format!("localhost:{}", broker.sasl);
    let p = unique("ksec");
    let security = |ca: &str, mechanism: &str| {
        format!(
            "\n[kafka.tls]\nca_file = {:?}\n[kafka.sasl]\nmechanism = \"{mechanism}\"\nusername = \"{user}\"\n",
            pki.path(ca)
        )
    };
    let scram = format!("{}{}", config(&p), security("ca.pem", "SCRAM-SHA-512"));

    // A wrong password: start-up stops, saying Kafka refused the login; no password shown.
    let err = start_fails(
        &scram,
        &[
            ("WEIR_KAFKA_BOOTSTRAP", &bootstrap),
            ("WEIR_KAFKA_SASL_PASSWORD", "not-the-Secret"),
        ],
    );
    assert!(
        err.contains("SASL") && err.contains("authentication"),
        "{err}"
    );
    assert!(!err.contains("not-the-Secret"), "{err}");
    // A CA that did not issue the broker's certificate.
    let err = start_fails(
        &format!(
            "{}{}",
            bed::config(&p),
            security("rogue-ca.pem", "SCRAM-SHA-512")
        ),
        &[
            ("WEIR_KAFKA_BOOTSTRAP", &bootstrap),
            ("WEIR_KAFKA_SASL_PASSWORD", password),
        ],
    );
    assert!(
        err.contains("TLS with Kafka failed") && err.contains("certificate verify failed"),
        "{err}"
    );

    let env = [
        ("WEIR_KAFKA_BOOTSTRAP", bootstrap.as_str()),
        ("WEIR_KAFKA_SASL_PASSWORD", password),
    ];
    let mut publisher = Publisher::new(&format!("{p}-pub"));
    let topic = format!("{p}.thermostat");
    let mut expected = 0;
    for mechanism in ["SCRAM-SHA-512", "PLAIN"] {
        let config = format!("{}{}", config(&p), security("ca.pem", mechanism));
        let weir = Weir::start(&config, &env);
        publish_readings(&mut publisher, &p, expected, 10);
        expected += 10;
        let got = count_with(
            &topic,
            expected,
            Duration::from_secs(60),
            &each(&reader(&broker)),
        );
        assert_eq!(
            got, expected,
            "the records are in the secured Kafka ({mechanism})"
        );
        let (status, log) = weir.stop();
        assert!(status.success(), "{log}");
        assert!(!log.contains(password), "the password reached the log");
    }
}

/// Kafka requires client certificates (`ssl.client.auth=required`): weir with one from the
/// CA the broker trusts writes its records; with one from another CA, start-up stops with
/// the cause.
#[test]
fn kafka_with_client_certificates() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let broker = SecuredKafka::start(&pki, dir.path(), "kafka-Secret-unused");
    let bootstrap = format!("localhost:{}", broker.mtls);
    let p = unique("kmtls");
    let tls = |client: &str| {
        format!(
            "{}\n[kafka.tls]\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
            config(&p),
            pki.path("ca.pem"),
            pki.path(&format!("{client}.pem")),
            pki.path(&format!("{client}.key")),
        )
    };
    let env = [("WEIR_KAFKA_BOOTSTRAP", bootstrap.as_str())];
    let err = start_fails(&tls("rogue-client"), &env);
    assert!(err.contains("TLS with Kafka failed"), "{err}");

    let weir = Weir::start(&tls("client"), &env);
    let mut publisher = Publisher::new(&format!("{p}-pub"));
    publish_readings(&mut publisher, &p, 0, 10);
    let got = count_with(
        &format!("{p}.thermostat"),
        10,
        Duration::from_secs(60),
        &each(&reader(&broker)),
    );
    assert_eq!(
        got, 10,
        "the records are in the Kafka that wants client certificates"
    );
    let (status, log) = weir.stop();
    assert!(status.success(), "{log}");
}

/// `kafka.sasl.password_file` rotated while weir runs: the password is changed in Kafka,
/// the file has the new one, the broker restarts (so weir's connections are renewed) and
/// weir logs back in with it — no restart of weir, no message lost, neither password in
/// its output. (With SCRAM-SHA-256, so that both SCRAM mechanisms are exercised.)
#[test]
fn kafka_password_file_is_followed_without_a_restart() {
    const MECHANISM: &str = "SCRAM-SHA-256";
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = ("kafka-Old-Secret-3141", "kafka-New-Secret-1618");
    let mut broker = SecuredKafka::start(&pki, dir.path(), old);
    let bootstrap = format!("localhost:{}", broker.sasl);
    let secret_file = dir.path().join("kafka-password");
    std::fs::write(&secret_file, format!("{old}\n")).unwrap();
    let p = unique("krot");
    let config = format!(
        "{}\n[kafka.tls]\nca_file = {:?}\n[kafka.sasl]\nmechanism = \"{MECHANISM}\"\nusername = \"{KAFKA_USER}\"\npassword_file = {:?}\n",
        config(&p),
        pki.path("ca.pem"),
        secret_file
    );
    let weir = Weir::start(&config, &[("WEIR_KAFKA_BOOTSTRAP", &bootstrap)]);
    let topic = format!("{p}.thermostat");
    let mut publisher = Publisher::new(&format!("{p}-pub"));
    publish_readings(&mut publisher, &p, 0, 10);
    let read = reader(&broker);
    assert_eq!(
        count_with(&topic, 10, Duration::from_secs(60), &each(&read)),
        10
    );

    // Rotate: Kafka and the file get the new password; the broker restarts knowing only it.
    broker.set_password(MECHANISM, new);
    std::fs::write(&secret_file, format!("{new}\n")).unwrap();
    broker.node.stop();
    broker.node.restart();
    publish_readings(&mut publisher, &p, 10, 10);
    let got = count_with(&topic, 20, Duration::from_secs(60), &each(&read));
    assert_eq!(got, 20, "weir's log:\n{}", weir.log.lock().unwrap());
    let (status, log) = weir.stop();
    assert!(status.success(), "weir ended with {status}:\n{log}");
    assert!(log.contains("kafka.sasl.password_file changed"), "{log}");
    for pw in [old, new] {
        assert!(!log.contains(pw), "a password reached the log:\n{log}");
    }
}

/// The HTTPS listener's accept loop (its TLS handshakes run on tasks of their own) is
/// supervised like every task of weir: when it dies (a failpoint of test builds, at the
/// first connection), weir stops with an error naming the admin listener, instead of
/// running on with an API that no longer answers.
#[test]
fn an_https_accept_loop_that_dies_stops_weir_with_an_error() {
    let pki = Pki::new();
    let p = unique("admdie");
    let config = format!(
        "{}\n[admin.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        config(&p),
        pki.path("server.pem"),
        pki.path("server.key")
    );
    let weir = Weir::launch(&config, &[("WEIR_FAILPOINT", "admin-accept-panic")]);
    let addr = weir
        .admin
        .strip_prefix("https://")
        .expect("the admin listener says https://")
        .to_owned();
    let _ = std::net::TcpStream::connect(&addr);
    let (status, log) = weir.wait_exit(Duration::from_secs(30));
    let status = status.expect("weir stops by itself when its admin listener dies");
    assert!(!status.success(), "{log}");
    assert!(log.contains("admin listener"), "{log}");
}

/// `[admin.tls]`: the admin listener speaks HTTPS with the configured certificate, and the
/// CLI reaches it with `--admin-ca`. Its tokens come from `admin.token_file`, rotated while
/// weir runs.
#[test]
fn admin_listener_serves_https() {
    let pki = Pki::new();
    let p = unique("adm");
    let tokens = pki.path("admin-tokens");
    let config = format!(
        "{}\n[admin.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        config(&p).replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:0\"\ntoken_file = {tokens:?}")
        ),
        pki.path("server.pem"),
        pki.path("server.key")
    );
    // A token file with a short token stops start-up, naming the key and not the token.
    std::fs::write(&tokens, "ops:too-short\n").unwrap();
    let err = start_fails(&config, &[]);
    assert!(
        err.contains("admin.token_file") && err.contains("shorter than 16"),
        "{err}"
    );
    assert!(!err.contains("too-short"), "{err}");
    std::fs::write(&tokens, "ops:adm-Secret-42-long-enough\n").unwrap();
    let weir = Weir::launch(&config, &[]);
    let addr = weir
        .admin
        .strip_prefix("https://")
        .expect("the admin listener says https://")
        .to_owned();
    let url = format!("https://localhost:{}", addr.rsplit_once(':').unwrap().1);
    let ca = reqwest::Certificate::from_pem(
        pki.path("ca.pem")
            .to_str()
            .map(std::fs::read)
            .unwrap()
            .unwrap()
            .as_slice(),
    )
    .unwrap();
    let client = reqwest::blocking::Client::builder()
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let start = Instant::now();
    loop {
        let status = client
            .get(format!("{url}/readyz"))
            .send()
            .map(|r| r.status().as_u16());
        if status.as_ref().is_ok_and(|s| *s == 200) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "HTTPS /readyz: {status:?}; log:\n{}",
            weir.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Plain HTTP gets no answer from the HTTPS listener.
    assert!(http_get(&format!("http://{addr}/readyz")).is_none_or(|(s, _)| s != 200));
    // The CLI, trusting the CA.
    let list = |token: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["cohort", "list", "--admin", &url, "--admin-ca"])
            .arg(pki.path("ca.pem"))
            .env("WEIR_ADMIN_TOKEN", token)
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success() && said.contains("thermostats"), said)
    };
    let (listed, said) = list("adm-Secret-42-long-enough");
    assert!(listed, "{said}");
    // Rotate the tokens: the file is replaced in one step; the old token is refused from
    // the next request on, the new one taken, without a restart.
    let next = pki.path("admin-tokens.next");
    std::fs::write(&next, "ops:adm-Rotated-43-long-enough\n").unwrap();
    std::fs::rename(&next, &tokens).unwrap();
    let (listed, said) = list("adm-Secret-42-long-enough");
    assert!(!listed && said.contains("wrong bearer token"), "{said}");
    let (listed, said) = list("adm-Rotated-43-long-enough");
    assert!(listed, "{said}");
    // A file that turns bad (a short token) leaves the tokens in force, and is logged.
    std::fs::write(&tokens, "ops:short\n").unwrap();
    let (listed, said) = list("adm-Rotated-43-long-enough");
    assert!(listed, "{said}");
    // Without the CA the CLI refuses the unknown certificate.
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["cohort", "list", "--admin", &url])
        .env("WEIR_ADMIN_TOKEN", "adm-Rotated-43-long-enough")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let (status, log) = weir.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("admin.token_file changed"), "{log}");
    assert!(
        log.contains("shorter than 16 characters") && log.contains("keeps the tokens read before"),
        "{log}"
    );
    for secret in ["adm-Secret-42", "adm-Rotated-43", "ops:short"] {
        assert!(!log.contains(secret), "a token reached the log:\n{log}");
    }
}
