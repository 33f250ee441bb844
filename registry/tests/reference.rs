//! Compatibility verdicts against Apache Avro's reference checker.
//!
//! `tests/compatibility_reference.py` asks the registry, over HTTP, for every pair of a corpus
//! (Apache Avro's own compatibility test schemas, the classes weir once got wrong, a record
//! field of every type against every other, generated evolutions of realistic records) under
//! BACKWARD, FORWARD and FULL, registers chains of versions under the transitive levels, and
//! compares each answer with Python `avro`'s `ReaderWriterCompatibilityChecker`.

mod support;

#[test]
fn every_verdict_agrees_with_avros_reference_checker() {
    let server = support::start();
    let out = support::run_python(
        "compatibility_reference.py",
        "avro.compatibility, avro.test.test_compatibility",
        &server,
    );
    print!("{out}");
    let last = out.lines().last().unwrap_or_default();
    let compared: usize = last
        .strip_prefix("all ")
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary line in:\n{out}"));
    assert!(
        compared > 20_000,
        "only {compared} verdicts were compared:\n{out}"
    );
}
