//! The Wasm host against real plugin builds: identity, fixtures, sandbox limits, isolation.

mod common;

use common::{adversarial, adversarial_build, kind, message, plugin_wasm};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use weir::transform::{Host, Limits, Outcome, codes};

fn host() -> Host {
    Host::new(Limits::default(), None).unwrap()
}

/// The headers of an emitted message's first record.
fn out_headers(o: &Outcome) -> usize {
    match o {
        Outcome::Emit(records) => records[0].headers.len(),
        other => panic!("{other:?}"),
    }
}

/// `payloads` on topic `t/x` through `p` in one batch: the outcomes, and their kinds.
fn run(p: &weir::transform::Configured, payloads: &[&str]) -> (Vec<Outcome>, Vec<String>) {
    let mut batch: Vec<_> = payloads
        .iter()
        .map(|m| message("t/x", m.as_bytes()))
        .collect();
    let out = p.process(&mut batch);
    let kinds = out.iter().map(kind).collect();
    (out, kinds)
}

#[test]
fn describe_gives_identity_and_schema() {
    let path = plugin_wasm("thermostat");
    let plugin = host().load_file(&path).unwrap();
    let info = plugin.info();
    assert_eq!(info.id(), "thermostat@1.0.0");
    assert_eq!(info.contract, "weir:transform@1.2.0 (framed-plugin)");
    assert_eq!(
        info.sha256,
        hex::encode(Sha256::digest(std::fs::read(&path).unwrap()))
    );
    assert!(
        plugin
            .schema()
            .canonical_form()
            .contains("ThermostatReading")
    );
}

#[test]
fn adversarial_messages_are_classified_and_healthy_ones_still_emit() {
    classifies("adversarial@0.1.0");
}

/// The same, through contract 1.1's `packed-plugin` world, which weir still runs.
#[test]
fn adversarial_messages_are_classified_alike_through_contract_1_1() {
    classifies("adversarial@0.1.1");
}

fn classifies(id: &str) {
    let (plugin, p) = adversarial_build(id, 32);
    let payloads = [
        "a",
        "loop",
        "b",
        "bomb",
        "panic",
        "c",
        "recurse",
        "badschema",
        "huge",
        "many",
        "reject",
        "d",
    ];
    let mut batch: Vec<_> = payloads
        .iter()
        .map(|p| message("t/x", p.as_bytes()))
        .collect();
    let lent = batch.clone();
    let started = Instant::now();
    let out = p.process(&mut batch);
    // Bisected, re-run one by one, and moved into the binding types (1.1): still whole,
    // as quarantine needs them.
    assert_eq!(batch, lent, "the messages are not as they were lent");
    let kinds: Vec<String> = out.iter().map(kind).collect();
    assert_eq!(
        kinds,
        [
            "emit:1",
            "fail:plugin.timeout",
            "emit:1",
            "fail:plugin.oom",
            "fail:plugin.trap",
            "emit:1",
            "fail:plugin.trap",
            "fail:schema.violation",
            "fail:plugin.output-too-large",
            "fail:plugin.output-too-large",
            "reject:test.rejected",
            "emit:1",
        ]
    );
    let reason = |i: usize| match &out[i] {
        Outcome::Fail { reason, .. } => reason.clone(),
        other => panic!("{other:?}"),
    };
    assert!(
        reason(4).contains("adversarial panic on request"),
        "{}",
        reason(4)
    );
    assert!(reason(6).contains("stack overflowing"), "{}", reason(6));
    assert!(reason(7).contains("field `text`"), "{}", reason(7));
    assert!(reason(3).contains("32 MiB"), "{}", reason(3));
    // Bisection re-runs the looping half a handful of times, each bounded by its deadline.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    // Healthy records are real Avro of the declared schema.
    let Outcome::Emit(records) = &out[11] else {
        unreachable!()
    };
    assert_eq!(
        plugin.schema().decode_to_json(&records[0].value).unwrap(),
        serde_json::json!({"text": "d"})
    );
}

#[test]
fn reserved_headers_cannot_be_set_by_plugins() {
    let plugin = host().load_file(&plugin_wasm("adversarial")).unwrap();
    let out = plugin
        .configure(vec![], "adversarial")
        .unwrap()
        .process(&mut [message("t", b"spoof")]);
    assert_eq!(kind(&out[0]), format!("fail:{}", codes::CONTRACT));
}

#[test]
fn a_lone_infinite_loop_is_stopped_at_its_deadline() {
    let plugin = host().load_file(&plugin_wasm("adversarial")).unwrap();
    let p = plugin.configure(vec![], "adversarial").unwrap();
    let started = Instant::now();
    let out = p.process(&mut [message("t", b"loop")]);
    assert_eq!(kind(&out[0]), format!("fail:{}", codes::TIMEOUT));
    // The deadline is 100 ms; allow generous scheduling slack on a loaded machine.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

/// Set-up calls are held to their deadline too: the epoch advances while any call into a
/// plugin runs (`init` here; instantiation and `describe` take the same path), not only
/// while messages are processed.
#[test]
fn an_init_that_spins_is_stopped_at_its_deadline() {
    let plugin = host().load_file(&plugin_wasm("adversarial")).unwrap();
    let started = Instant::now();
    // On a thread of its own: were the call never stopped, the test fails instead of hanging.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let configured = plugin.configure(vec![("init".into(), "loop".into())], "adversarial");
        let _ = tx.send(configured.err());
    });
    let err = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("a spinning init was not stopped within 30 s")
        .expect("a spinning init was refused");
    assert!(err.contains("CPU time budget"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn output_is_deterministic_across_hosts() {
    let path = plugin_wasm("thermostat");
    let mut batch: Vec<_> = (0..50)
        .map(|i| {
            let payload = format!(
                r#"{{"ts":{i},"temperature":{{"value":{},"unit":"F"}},"humidity":{{"value":40.5}}}}"#,
                60.0 + f64::from(i) * 0.37
            );
            message(&format!("p/t-{i}"), payload.as_bytes())
        })
        .collect();
    let mut run = || {
        let plugin = host().load_file(&path).unwrap();
        plugin.configure(vec![], "t").unwrap().process(&mut batch)
    };
    let (a, b) = (run(), run());
    assert!(a.iter().all(|o| matches!(o, Outcome::Emit(_))));
    assert_eq!(a, b);
}

#[test]
fn config_is_passed_to_init_and_refusals_are_reported() {
    let plugin = host().load_file(&plugin_wasm("thermostat")).unwrap();
    let err = plugin
        .configure(vec![("max_c".into(), "warm".into())], "t")
        .unwrap_err();
    assert!(err.contains("max_c"), "{err}");
    let narrow = plugin
        .configure(vec![("max_c".into(), "25".into())], "t")
        .unwrap();
    let out = narrow.process(&mut [message("a/t-1", br#"{"temp_c":30}"#)]);
    assert_eq!(kind(&out[0]), "reject:reading.out-of-range");
}

#[test]
fn precompiled_artifacts_are_cached_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = plugin_wasm("meter");
    let first = Host::new(Limits::default(), Some(dir.path()))
        .unwrap()
        .load_file(&path)
        .unwrap();
    let cached: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(cached.len(), 1);
    let name = cached[0]
        .as_ref()
        .unwrap()
        .file_name()
        .into_string()
        .unwrap();
    assert!(name.starts_with(&first.info().sha256), "{name}");
    let second = Host::new(Limits::default(), Some(dir.path()))
        .unwrap()
        .load_file(&path)
        .unwrap();
    assert_eq!(first.info(), second.info());
    let frame = meter_frame();
    let a = first
        .configure(vec![], "m")
        .unwrap()
        .process(&mut [message("m/1", &frame)]);
    let b = second
        .configure(vec![], "m")
        .unwrap()
        .process(&mut [message("m/1", &frame)]);
    assert_eq!(a, b);
    assert_eq!(kind(&a[0]), "emit:1");
}

fn meter_frame() -> Vec<u8> {
    let mut f = vec![1u8];
    f.extend_from_slice(&7u32.to_le_bytes());
    f.extend_from_slice(&1_700_000_000_000u64.to_le_bytes());
    f.extend_from_slice(&1500u32.to_le_bytes());
    f.push(0);
    let crc = crc16(&f);
    f.extend_from_slice(&crc.to_le_bytes());
    f
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xffff;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[test]
fn files_that_are_not_plugins_are_refused_clearly() {
    let h = host();
    let err = |bytes: &[u8]| h.load(bytes).unwrap_err().to_string();
    assert!(err(b"hello").contains("not a WebAssembly file"));
    let core = wat::parse_str("(module)").unwrap();
    assert!(err(&core).contains("core Wasm module"), "{}", err(&core));
    let empty = wat::parse_str("(component)").unwrap();
    assert!(err(&empty).contains("not a weir plugin"), "{}", err(&empty));
    let wasi = wat::parse_str(
        r#"(component (import "wasi:cli/environment@0.2.0" (instance (export "get-arguments" (func (result (list string)))))))"#,
    )
    .unwrap();
    let e = err(&wasi);
    assert!(
        e.contains("not a weir plugin") && e.contains("wasi:cli/environment"),
        "{e}"
    );
}

/// A cohort's own limits (`plugin_memory_mib`, `plugin_time_ms`) hold its plugin to other
/// bounds than the host's, without touching other cohorts of the same plugin.
#[test]
fn a_cohort_can_have_its_own_limits() {
    let (plugin, host_wide) = adversarial(64);
    let own = weir::transform::CallLimits {
        output_bytes_per_message: None,
        memory_bytes: Some(16 << 20),
        time_per_message: Some(Duration::from_millis(200)),
    };
    let tight = plugin.configure_with(vec![], "tight", own).unwrap();
    let fail = |p: &weir::transform::Configured, payload: &[u8]| {
        let out = p.process(&mut [message("t/x", payload)]);
        match &out[0] {
            Outcome::Fail { reason, .. } => (kind(&out[0]), reason.clone()),
            other => panic!("expected a failure, got {other:?}"),
        }
    };
    let (k, why) = fail(&tight, b"bomb");
    assert_eq!(k, format!("fail:{}", codes::OOM));
    assert!(why.contains("16 MiB"), "{why}");
    let (_, why) = fail(&host_wide, b"bomb");
    assert!(why.contains("64 MiB"), "{why}");
    // One message: the deadline is the cohort's 200 ms, not the host's 100 ms minimum.
    let (k, why) = fail(&tight, b"loop");
    assert_eq!(k, format!("fail:{}", codes::TIMEOUT));
    assert!(why.contains("200ms"), "{why}");
    let (_, why) = fail(&host_wide, b"loop");
    assert!(why.contains("100ms"), "{why}");
    // Within its limits the plugin works as before.
    let out = tight.process(&mut [message("t/x", b"fine")]);
    assert!(!kind(&out[0]).starts_with("fail"), "{}", kind(&out[0]));
}

/// A plugin that returns the same bytes of its memory as the value of 1,000 records (the
/// canonical ABI allows it) passes the memory cap, the record count and the record size,
/// and would have the host copy 100 MB out of one 100-byte message. The output bound stops
/// the copy as it happens, the message is quarantined as `plugin.output-too-large`, and its
/// neighbours in the batch still emit.
#[test]
fn output_aliasing_one_buffer_is_bounded_as_it_is_copied() {
    let (_, p) = adversarial_build("adversarial@0.1.1", 32);
    let (out, kinds) = run(&p, &["a", "alias", "b"]);
    assert_eq!(
        kinds,
        ["emit:1", "fail:plugin.output-too-large", "emit:1"],
        "{out:?}"
    );
    let Outcome::Fail { reason, .. } = &out[1] else {
        unreachable!()
    };
    assert!(reason.contains("4194304 bytes from one call"), "{reason}");
    assert!(reason.contains("plugin_output_kib"), "{reason}");
}

/// Framed outcomes (contract 1.2) that break the layout, cut short, with a byte too many
/// or with a record count no reply could hold, fail the message that caused them as
/// `plugin.contract` with the place and the problem, and its neighbours still emit. An
/// instance that broke the frame is not used again: one that breaks every reply after
/// `frame:poison` would otherwise fail the neighbours too.
#[test]
fn malformed_framed_outcomes_fail_only_their_message() {
    let (_, p) = adversarial(32);
    for (attack, why) in [
        ("frame:cut", "are left"),
        ("frame:junk", "1 byte follows the last item"),
        ("frame:lie", "record count is 4294967295"),
        ("frame:poison", "are left"),
    ] {
        let (out, kinds) = run(&p, &["a", attack, "b"]);
        assert_eq!(
            kinds,
            ["emit:1", "fail:plugin.contract", "emit:1"],
            "{attack}: {out:?}"
        );
        let Outcome::Fail { reason, .. } = &out[1] else {
            unreachable!()
        };
        assert!(
            reason.contains("`process-framed` returned malformed frame at byte"),
            "{reason}"
        );
        assert!(reason.contains(why), "{attack}: {reason}");
    }
}

/// A plugin built against contract 1.1 (its host import `@1.1.0`, its `process` the
/// `packed-plugin` one) loads and publishes what a 1.2 build of the same code publishes.
#[test]
fn a_plugin_built_against_contract_1_1_0_still_runs_and_publishes_the_same_bytes() {
    let built = std::fs::read(plugin_wasm("adversarial@0.1.1")).unwrap();
    let old = common::built_against(&built, "1.1.0");
    let packed = host().load(&old).unwrap();
    assert_eq!(
        packed.info().contract,
        "weir:transform@1.1.0 (packed-plugin)"
    );
    let framed = host().load_file(&plugin_wasm("adversarial@0.1.0")).unwrap();
    let batch = || {
        ["a", "reject", "pair:300", "été"]
            .iter()
            .map(|m| message("t/x", m.as_bytes()))
            .collect::<Vec<_>>()
    };
    let run = |p: &weir::transform::Plugin| p.configure(vec![], "t").unwrap().process(&mut batch());
    let (old, new) = (run(&packed), run(&framed));
    assert_eq!(
        old.iter().map(kind).collect::<Vec<_>>(),
        ["emit:1", "reject:test.rejected", "emit:2", "emit:1"]
    );
    assert_eq!(old, new);
}

/// Under the copy bound, the records of one message together are still held to the
/// message's bound, however the call's fuel was shared out.
#[test]
fn a_cohorts_output_bound_counts_every_record_of_a_message() {
    let (plugin, _) = adversarial(64);
    let own = weir::transform::CallLimits {
        output_bytes_per_message: Some(64 << 10),
        ..Default::default()
    };
    let tight = plugin.configure_with(vec![], "tight", own).unwrap();
    // The call may copy 4 × 64 KiB; the 100 KB record fits that, not its message's bound.
    let big = "x".repeat(100_000);
    let mut batch = vec![
        message("t/x", b"fine"),
        message("t/x", big.as_bytes()),
        message("t/x", b"fine"),
        message("t/x", b"fine"),
    ];
    let out = tight.process(&mut batch);
    let kinds: Vec<String> = out.iter().map(kind).collect();
    assert_eq!(
        kinds,
        ["emit:1", "fail:plugin.output-too-large", "emit:1", "emit:1"]
    );
    let Outcome::Fail { reason, .. } = &out[1] else {
        unreachable!()
    };
    assert!(reason.contains("the limit is 65536"), "{reason}");
    // A framed reply over the call's bound is stopped as it is copied.
    let out = tight.process(&mut [message("t/x", b"pair:100000")]);
    let Outcome::Fail { code, reason } = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(*code, codes::OUTPUT_TOO_LARGE);
    assert!(
        reason.contains("more than 65536 bytes from one call"),
        "{reason}"
    );
    // Empty headers are not free: each counts what the host holds for it.
    let out = tight.process(&mut [message("t/x", b"headers:100")]);
    assert_eq!(kind(&out[0]), "emit:1", "{out:?}");
    assert_eq!(out_headers(&out[0]), 100);
    let out = tight.process(&mut [message("t/x", b"headers:2000")]);
    let Outcome::Fail { reason, .. } = &out[0] else {
        panic!("{out:?}")
    };
    assert!(reason.contains("the limit is 65536"), "{reason}");
    // Aliasing (contract 1.1) is caught while copying, at the cohort's bound.
    let (packed, _) = adversarial_build("adversarial@0.1.1", 64);
    let tight = packed.configure_with(vec![], "tight", own).unwrap();
    let out = tight.process(&mut [message("t/x", b"alias")]);
    let Outcome::Fail { reason, .. } = &out[0] else {
        panic!("{out:?}")
    };
    assert!(
        reason.contains("more than 65536 bytes from one call"),
        "{reason}"
    );
}

/// The time budget is the calling thread's CPU time, not wall time: a plugin whose thread
/// waits for the CPU (a busy host, a worker at the lowest priority) is not cut off for the
/// time others ran. Here every core is kept busy by threads at normal priority while the
/// call runs at nice 19; a wall-clock deadline would stop the loop after a small fraction
/// of its budget of CPU.
#[test]
fn the_time_budget_is_cpu_time() {
    let (plugin, _) = adversarial(64);
    let budget = Duration::from_millis(10);
    let own = weir::transform::CallLimits {
        output_bytes_per_message: None,
        memory_bytes: None,
        time_per_message: Some(budget),
    };
    let tight = plugin.configure_with(vec![], "tight", own).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let running = std::sync::Arc::new(std::sync::Barrier::new(2 * cores + 1));
    let hogs: Vec<_> = (0..2 * cores)
        .map(|_| {
            let (stop, running) = (stop.clone(), running.clone());
            std::thread::spawn(move || {
                running.wait();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    running.wait();
    let (cpu, wall, outcome) = std::thread::spawn(move || {
        assert!(weir::priority::set_nice(19));
        let cpu = weir::priority::thread_cpu;
        let (cpu_before, started) = (cpu(), Instant::now());
        let out = tight.process(&mut [message("t/x", b"loop")]);
        (cpu() - cpu_before, started.elapsed(), kind(&out[0]))
    })
    .join()
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for hog in hogs {
        hog.join().unwrap();
    }
    eprintln!("CPU {cpu:?} over {wall:?} of wall time");
    assert_eq!(outcome, format!("fail:{}", codes::TIMEOUT));
    assert!(
        cpu >= budget,
        "the loop got {cpu:?} of CPU, less than its {budget:?}"
    );
    // Past the budget by at most a few epoch ticks of CPU.
    assert!(
        cpu < budget * 3,
        "the loop ran {cpu:?} of CPU, far past its {budget:?}"
    );
}

/// One message that spins, in a batch of healthy ones on the same cohort: once the
/// plugin's cost per message is known, the batch is cut short at a multiple of it and run
/// message by message, so the spin costs its neighbours about one message's budget, not
/// the batch's sum of budgets (64 × 20 ms = 1.28 s).
#[test]
fn one_spinning_message_costs_its_batch_little() {
    let (_, p) = adversarial(64);
    let healthy = |n: usize| -> Vec<_> {
        (0..n)
            .map(|i| message("t/x", format!("ok{i}").as_bytes()))
            .collect()
    };
    for _ in 0..5 {
        let out = p.process(&mut healthy(64));
        assert!(out.iter().all(|o| kind(o) == "emit:1"));
    }
    let mut batch = healthy(63);
    batch.insert(31, message("t/x", b"loop"));
    let cpu = weir::priority::thread_cpu();
    let out = p.process(&mut batch);
    let spent = weir::priority::thread_cpu() - cpu;
    let kinds: Vec<String> = out.iter().map(kind).collect();
    assert_eq!(kinds[31], "fail:plugin.timeout");
    assert_eq!(kinds.iter().filter(|k| *k == "emit:1").count(), 63);
    // The spin alone is the host's 100 ms floor; the cut-short batch at least 20 ms.
    assert!(
        spent < Duration::from_millis(600),
        "the batch cost {spent:?} of CPU"
    );
}

/// A full instance pool is the host's state, not the plugin's fault: a call that needs an
/// instance when other cohorts' idle ones fill the pool takes their room (idle instances
/// are a cache) and runs; its message is never failed as `plugin.trap`.
#[test]
fn a_full_instance_pool_makes_room_instead_of_failing_messages() {
    use weir::transform::{Host, Limits};
    let limits = Limits {
        max_instances: 2,
        ..Limits::default()
    };
    let plugin = Host::new(limits, None)
        .unwrap()
        .load_file(&plugin_wasm("adversarial"))
        .unwrap();
    let a = plugin.configure(vec![], "a").unwrap();
    // A trap drops a's instance; b and c then fill the pool with idle ones.
    assert_eq!(
        kind(&a.process(&mut [message("t/x", b"panic")])[0]),
        "fail:plugin.trap"
    );
    let b = plugin.configure(vec![], "b").unwrap();
    let c = plugin.configure(vec![], "c").unwrap();
    let out = a.process(&mut [message("t/x", b"fine")]);
    assert_eq!(kind(&out[0]), "emit:1", "{out:?}");
    for other in [&b, &c] {
        assert_eq!(
            kind(&other.process(&mut [message("t/x", b"fine")])[0]),
            "emit:1"
        );
    }
}

/// A call that finds the pool full of busy instances waits for one (it is the host's
/// state, not the plugin's fault: never quarantined), and is counted while it waits longer
/// than a second, which is what makes `/readyz` report the stall; when an instance comes
/// back, the call runs and the count goes back to zero. Three plugins spin at once on a
/// pool of two: whatever order their threads run in, one of them waits for the others.
#[test]
fn a_call_waiting_for_room_in_a_busy_pool_is_counted_then_runs() {
    let limits = Limits {
        max_instances: 2,
        time_per_message: Duration::from_secs(3),
        ..Limits::default()
    };
    let host = Host::new(limits, None).unwrap();
    let waits = prometheus_client::metrics::gauge::Gauge::<i64>::default();
    host.count_capacity_waits_in(waits.clone());
    let plugin = host.load_file(&plugin_wasm("adversarial")).unwrap();
    let configured: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|name| plugin.configure(vec![], name).unwrap())
        .collect();
    std::thread::scope(|s| {
        let spinners: Vec<_> = configured
            .iter()
            .map(|p| s.spawn(move || kind(&p.process(&mut [message("t/x", b"loop")])[0])))
            .collect();
        let started = Instant::now();
        while waits.get() == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "a call waiting for room was never counted"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Each ran to its own deadline: the wait cost none of them its budget, nor made
        // any a failure of its own.
        for spinner in spinners {
            assert_eq!(spinner.join().unwrap(), "fail:plugin.timeout");
        }
    });
    assert_eq!(waits.get(), 0, "the wait is no longer counted");
    // And the pool serves again.
    assert_eq!(
        kind(&configured[0].process(&mut [message("t/x", b"fine")])[0]),
        "emit:1"
    );
}

/// A component over the per-component instance limits is refused when it is loaded, with
/// wasmtime's reason, instead of taking the pool from every other plugin.
#[test]
fn a_component_over_the_per_component_limits_is_refused_at_load() {
    use weir::transform::MAX_CORE_INSTANCES_PER_COMPONENT;
    let n = MAX_CORE_INSTANCES_PER_COMPONENT + 1;
    let instances: String = (0..n)
        .map(|i| format!("(core instance $i{i} (instantiate $m))\n"))
        .collect();
    let wat = format!("(component (core module $m) {instances})");
    let err = host()
        .load(&wat::parse_str(&wat).unwrap())
        .expect_err("over the limit");
    let text = err.to_string();
    assert!(text.contains("over this host's limits"), "{text}");
    assert!(
        text.contains(&MAX_CORE_INSTANCES_PER_COMPONENT.to_string()),
        "{text}"
    );
}
