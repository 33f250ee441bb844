//! A registry on loopback and the Python interpreter the conformance scripts run with.

use std::process::Command;

/// A registry served from its own thread (blocking clients cannot run inside tokio).
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    _dir: tempfile::TempDir,
}

/// Start a registry with default settings on a fresh data directory.
pub fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(format!("http://{}", listener.local_addr().unwrap()))
                .unwrap();
            weir_registry::serve(listener, &data, Default::default(), std::future::pending())
                .await
                .unwrap();
        });
    });
    Server {
        url: rx.recv().unwrap(),
        _dir: dir,
    }
}

/// Run `tests/<script>` with `WEIR_TEST_PYTHON` (`scripts/test` points it at a virtualenv
/// with what the scripts import) against `server`; panics with its output unless it exits 0.
/// Returns its standard output.
pub fn run_python(script: &str, imports: &str, server: &Server) -> String {
    let python = std::env::var("WEIR_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python)
        .args(["-c", &format!("import {imports}")])
        .output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "{python} cannot import {imports}: run the suite with scripts/test (it installs them), or set WEIR_TEST_PYTHON to a Python that has them"
    );
    let path = format!("{}/tests/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(&python)
        .arg(&path)
        .arg(&server.url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
