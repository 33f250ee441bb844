"""weir's registry's compatibility verdicts against Apache Avro's reference checker.

The oracle is Python `avro` (`avro.compatibility.ReaderWriterCompatibilityChecker`, the port
of the Java checker Confluent's registry uses). Every pair of the corpus is asked through the
registry's HTTP API under BACKWARD, FORWARD and FULL, and chains of versions are registered
under the transitive levels; each answer is compared with the reference's. The corpus:

- every schema Apache Avro's own compatibility tests define (`avro.test.test_compatibility`,
  shipped with the package), paired with every other;
- the classes of disagreement once found in weir (decimal records, writer unions, enum
  defaults, aliases, logical types);
- a record field of each of ~50 types (primitives, logical types, unions, arrays, maps, enums,
  fixed, nested records), paired with each other;
- evolutions generated from realistic records: fields added and removed with and without
  defaults, promoted, made optional, renamed with and without aliases, enum symbols added and
  removed, nested records, arrays and maps changed.

Usage: compatibility_reference.py http://127.0.0.1:PORT
Prints one line per disagreement and exits 1 if there is any.
"""

import http.client
import itertools
import json
import sys
import urllib.parse
import warnings

from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from avro.schema import Schema, parse

warnings.simplefilter("ignore")  # the reference warns about logical types it ignores

CT = "application/vnd.schemaregistry.v1+json"


class Registry:
    """One keep-alive connection to the registry under test."""

    def __init__(self, url):
        u = urllib.parse.urlparse(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body)
        self.conn.request(method, path, body=data, headers={"Content-Type": CT})
        resp = self.conn.getresponse()
        text = resp.read().decode()
        return resp.status, (json.loads(text) if text else None)


def reference(reader_text, writer_text):
    """Can data written with `writer_text` be read with `reader_text`, per the reference?"""
    reader, writer = parse(reader_text), parse(writer_text)
    result = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
    return result.compatibility is SchemaCompatibilityType.compatible


def text(schema):
    return schema if isinstance(schema, str) else json.dumps(schema, sort_keys=True)


def record(fields, name="R", **extra):
    return {"type": "record", "name": name, "fields": fields, **extra}


def field(name, type_, **extra):
    return {"name": name, "type": type_, **extra}


# ---------------------------------------------------------------------------------------
# The corpus: (label, old, new) triples of schema texts.
# ---------------------------------------------------------------------------------------


def apache_pairs():
    import avro.test.test_compatibility as apache

    schemas = []
    for name, value in sorted(vars(apache).items()):
        if not isinstance(value, Schema):
            continue
        t = json.dumps(value.to_json())
        if t == "[]":
            # An empty union has no value to write; apache-avro refuses to parse it, and a
            # registry cannot store a type nothing can be serialised with.
            continue
        schemas.append((name, t))
    for (a, ta), (b, tb) in itertools.product(schemas, repeat=2):
        yield f"apache {a} -> {b}", ta, tb


METER_V1 = record(
    [
        field("meter_id", "string"),
        field("kwh", {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 3}),
        field("read_at", {"type": "long", "logicalType": "timestamp-millis"}),
    ],
    name="MeterReading",
    namespace="io.weir.meters",
)


def with_fields(schema, fields, **extra):
    out = dict(schema)
    out["fields"] = fields
    out.update(extra)
    return out


def class_pairs():
    v1 = METER_V1
    tariff = field("tariff", ["null", "string"], default=None)
    yield "decimal record gains optional field", text(v1), text(with_fields(v1, v1["fields"] + [tariff]))
    yield "decimal record gains required field", text(v1), text(with_fields(v1, v1["fields"] + [field("tariff", "string")]))
    yield "decimal record loses a field", text(v1), text(with_fields(v1, v1["fields"][:2]))
    fixed_dec = {"type": "fixed", "name": "Money", "size": 8, "logicalType": "decimal", "precision": 18, "scale": 4}
    yield "fixed decimal record gains optional field", text(record([field("amount", fixed_dec)])), text(
        record([field("amount", fixed_dec), tariff])
    )
    yield "decimal scale changes", text(record([field("d", {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2})])), text(
        record([field("d", {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 4})])
    )
    # Writer unions against a non-union reader.
    for writer in (["int", "float"], ["int", "long"], ["null", "double"], ["int", "string"], ["float"]):
        yield f"writer union {writer} read as double", text(json.dumps(writer)), '"double"'
        yield f"double read as union {writer}", '"double"', text(json.dumps(writer))
    # Enum defaults.
    e_ab = {"type": "enum", "name": "Status", "symbols": ["OK", "FAULT"]}
    e_abc = {"type": "enum", "name": "Status", "symbols": ["OK", "FAULT", "OFFLINE"]}
    e_ab_d = dict(e_ab, symbols=["OK", "FAULT", "UNKNOWN"], default="UNKNOWN")
    e_abc_d = dict(e_abc, default="OK")
    for (la, a), (lb, b) in itertools.product(
        [("AB", e_ab), ("ABC", e_abc), ("AB+default", e_ab_d), ("ABC+default", e_abc_d)], repeat=2
    ):
        yield f"enum {la} -> {lb}", text(a), text(b)
        yield f"enum field {la} -> {lb}", text(record([field("s", a)])), text(record([field("s", b)]))
    # Aliases: records, fixed, enums, nested records, fields.
    old_rec = record([field("x", "int")], name="Old")
    yield "record renamed with alias", text(old_rec), text(record([field("x", "int")], name="New", aliases=["Old"]))
    yield "record renamed without alias", text(old_rec), text(record([field("x", "int")], name="New"))
    yield "fixed renamed with alias", text({"type": "fixed", "name": "F", "size": 4}), text(
        {"type": "fixed", "name": "G", "size": 4, "aliases": ["F"]}
    )
    yield "enum renamed with alias", text(e_ab), text(dict(e_ab, name="State", aliases=["Status"]))
    nested_old = record([field("inner", record([field("v", "int")], name="Inner"))], name="Outer")
    nested_new = record([field("inner", record([field("v", "int")], name="Inner2", aliases=["Inner"]))], name="Outer")
    yield "nested record renamed with alias", text(nested_old), text(nested_new)
    yield "field renamed with alias", text(record([field("temp", "double")])), text(record([field("temp_c", "double", aliases=["temp"])]))
    yield "field renamed without alias", text(record([field("temp", "double")])), text(record([field("temp_c", "double")]))
    yield "alias with full name", text(record([], name="Old", namespace="a")), text(record([], name="New", namespace="a", aliases=["a.Old"]))
    yield "namespace changed", text(record([field("x", "int")], namespace="a")), text(record([field("x", "int")], namespace="b"))
    # Logical types resolve on their underlying type.
    for a, b in [
        ("long", {"type": "int", "logicalType": "date"}),
        ({"type": "long", "logicalType": "timestamp-millis"}, {"type": "long", "logicalType": "timestamp-micros"}),
        ({"type": "int", "logicalType": "time-millis"}, {"type": "long", "logicalType": "time-micros"}),
        ("string", {"type": "string", "logicalType": "uuid"}),
        ("bytes", {"type": "bytes", "logicalType": "decimal", "precision": 5, "scale": 1}),
        ({"type": "long", "logicalType": "local-timestamp-millis"}, "int"),
    ]:
        yield f"logical {a} -> {b}", text(record([field("t", a)])), text(record([field("t", b)]))


def field_types():
    inner = lambda fields, name="Inner", **kw: record(fields, name=name, **kw)
    return [
        "null", "boolean", "int", "long", "float", "double", "bytes", "string",
        {"type": "int", "logicalType": "date"},
        {"type": "int", "logicalType": "time-millis"},
        {"type": "long", "logicalType": "time-micros"},
        {"type": "long", "logicalType": "timestamp-millis"},
        {"type": "long", "logicalType": "timestamp-micros"},
        {"type": "long", "logicalType": "local-timestamp-millis"},
        {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2},
        {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 3},
        {"type": "fixed", "name": "Dec", "size": 8, "logicalType": "decimal", "precision": 18, "scale": 2},
        {"type": "string", "logicalType": "uuid"},
        {"type": "fixed", "name": "Dur", "size": 12, "logicalType": "duration"},
        ["null", "int"], ["null", "long"], ["null", "string"], ["int", "null"], ["int", "float"],
        ["int", "long", "float"], ["null", "string", "bytes"], ["string", "int"],
        ["null", {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}],
        {"type": "array", "items": "int"}, {"type": "array", "items": "long"},
        {"type": "array", "items": "string"}, {"type": "array", "items": ["null", "int"]},
        {"type": "map", "values": "int"}, {"type": "map", "values": "double"},
        {"type": "map", "values": "bytes"},
        {"type": "enum", "name": "E", "symbols": ["A", "B"]},
        {"type": "enum", "name": "E", "symbols": ["A", "B", "C"]},
        {"type": "enum", "name": "E", "symbols": ["A", "Z"], "default": "Z"},
        {"type": "enum", "name": "E2", "symbols": ["A", "B"], "aliases": ["E"]},
        {"type": "fixed", "name": "F", "size": 4},
        {"type": "fixed", "name": "F", "size": 8},
        {"type": "fixed", "name": "G", "size": 4},
        {"type": "fixed", "name": "G", "size": 4, "aliases": ["F"]},
        inner([field("x", "int")]),
        inner([field("x", "long")]),
        inner([field("x", "int"), field("y", "string", default="")]),
        inner([field("x", "int"), field("y", "string")]),
        inner([field("y", "string", default="")]),
        inner([field("x", "int")], name="Other"),
        inner([field("x", "int")], name="Other", aliases=["Inner"]),
        ["null", inner([field("x", "int")])],
        ["null", inner([field("x", "long")])],
        {"type": "array", "items": inner([field("x", "int")])},
        {"type": "map", "values": inner([field("x", "long")])},
    ]


def field_type_pairs():
    types = field_types()
    wrap = lambda t: text(record([field("v", t)]))
    for (i, a), (j, b) in itertools.product(enumerate(types), repeat=2):
        yield f"field type #{i} {json.dumps(a)} -> #{j} {json.dumps(b)}", wrap(a), wrap(b)


def evolution_pairs():
    """Mutations of realistic records, each applied alone."""
    location = record([field("lat", "double"), field("lon", "double")], name="Location")
    base = record(
        [
            field("device_id", "string"),
            field("seq", "int"),
            field("temperature_c", "float"),
            field("status", {"type": "enum", "name": "Status", "symbols": ["OK", "FAULT"]}),
            field("where", location),
            field("tags", {"type": "array", "items": "string"}),
            field("attrs", {"type": "map", "values": "long"}),
            field("note", ["null", "string"], default=None),
            field("kwh", {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 3}),
        ],
        name="Telemetry",
        namespace="io.weir.fleet",
    )
    fields = base["fields"]

    def replace(name, new):
        return with_fields(base, [new if f["name"] == name else f for f in fields])

    def drop(name):
        return with_fields(base, [f for f in fields if f["name"] != name])

    mutations = {
        "add required int": with_fields(base, fields + [field("rssi", "int")]),
        "add int with default": with_fields(base, fields + [field("rssi", "int", default=0)]),
        "add optional": with_fields(base, fields + [field("rssi", ["null", "int"], default=None)]),
        "add decimal with default": with_fields(
            base, fields + [field("cost", {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}, default="\u0000")]
        ),
        "add nested record with default": with_fields(
            base, fields + [field("gps", record([field("fix", "boolean")], name="Gps"), default={"fix": False})]
        ),
        "remove required": drop("seq"),
        "remove optional": drop("note"),
        "remove decimal": drop("kwh"),
        "seq int->long": replace("seq", field("seq", "long")),
        "temperature float->double": replace("temperature_c", field("temperature_c", "double")),
        "temperature float->int": replace("temperature_c", field("temperature_c", "int")),
        "device_id string->bytes": replace("device_id", field("device_id", "bytes")),
        "seq made optional": replace("seq", field("seq", ["null", "int"], default=None)),
        "seq made union int|string": replace("seq", field("seq", ["int", "string"])),
        "note narrowed to string": replace("note", field("note", "string", default="")),
        "note widened": replace("note", field("note", ["null", "string", "int"], default=None)),
        "status symbol added": replace("status", field("status", {"type": "enum", "name": "Status", "symbols": ["OK", "FAULT", "OFFLINE"]})),
        "status symbol removed": replace("status", field("status", {"type": "enum", "name": "Status", "symbols": ["OK"]})),
        "status symbol removed, default": replace(
            "status", field("status", {"type": "enum", "name": "Status", "symbols": ["OK", "UNKNOWN"], "default": "UNKNOWN"})
        ),
        "status symbol added, default": replace(
            "status",
            field("status", {"type": "enum", "name": "Status", "symbols": ["OK", "FAULT", "OFFLINE"], "default": "OK"}),
        ),
        "record renamed with alias": with_fields(base, fields, name="Telemetry2", aliases=["io.weir.fleet.Telemetry"]),
        "record renamed without alias": with_fields(base, fields, name="Telemetry2"),
        "field renamed with alias": replace("seq", field("sequence", "int", aliases=["seq"])),
        "field renamed without alias": replace("seq", field("sequence", "int")),
        "field renamed, default": replace("seq", field("sequence", "int", default=0)),
        "nested lat float": replace("where", field("where", with_fields(location, [field("lat", "float"), field("lon", "double")]))),
        "nested gains alt": replace("where", field("where", with_fields(location, location["fields"] + [field("alt", "double", default=0.0)]))),
        "nested gains required alt": replace("where", field("where", with_fields(location, location["fields"] + [field("alt", "double")]))),
        "nested renamed with alias": replace(
            "where", field("where", with_fields(location, location["fields"], name="Position", aliases=["io.weir.fleet.Location"]))
        ),
        "nested renamed": replace("where", field("where", with_fields(location, location["fields"], name="Position"))),
        "nested made optional": replace("where", field("where", ["null", location], default=None)),
        "tags items bytes": replace("tags", field("tags", {"type": "array", "items": "bytes"})),
        "tags items int": replace("tags", field("tags", {"type": "array", "items": "int"})),
        "tags to map": replace("tags", field("tags", {"type": "map", "values": "string"})),
        "attrs values double": replace("attrs", field("attrs", {"type": "map", "values": "double"})),
        "attrs values int": replace("attrs", field("attrs", {"type": "map", "values": "int"})),
        "kwh to fixed decimal": replace(
            "kwh", field("kwh", {"type": "fixed", "name": "Kwh", "size": 8, "logicalType": "decimal", "precision": 12, "scale": 3})
        ),
        "kwh precision changed": replace("kwh", field("kwh", {"type": "bytes", "logicalType": "decimal", "precision": 16, "scale": 4})),
        "kwh to bytes": replace("kwh", field("kwh", "bytes")),
        "kwh to string": replace("kwh", field("kwh", "string")),
        "fields reordered": with_fields(base, list(reversed(fields))),
        "namespace changed": with_fields(base, fields, namespace="io.weir.other"),
    }
    variants = [("base", base)] + sorted(mutations.items())
    # Each mutation against the base in both directions, and mutations against each other
    # (two independent changes in one step).
    for (la, a), (lb, b) in itertools.product(variants, repeat=2):
        if la == lb:
            continue
        yield f"evolution {la} -> {lb}", text(a), text(b)


# Pairs where weir follows the specification and Java's checker, and Python's checker does
# not: Python compares an alias as written with the writer's full name, where the
# specification (and Java's `Schema.getAliases`) read an alias without a dot as a name in the
# reader's namespace. Not part of the agreement corpus; checked against the specification.
SPEC_OVER_PYTHON = [
    (
        "relative alias in a namespace",
        text(record([field("x", "int")], name="Old", namespace="a")),
        text(record([field("x", "int")], name="New", namespace="a", aliases=["Old"])),
        True,
    ),
    (
        "relative alias read in the empty namespace",
        text(record([field("x", "int")], name="Old")),
        text(record([field("x", "int")], name="New", namespace="a", aliases=["Old"])),
        False,
    ),
]

MODES = {
    "BACKWARD": lambda old, new: reference(new, old),
    "FORWARD": lambda old, new: reference(old, new),
    "FULL": lambda old, new: reference(new, old) and reference(old, new),
}


def check_pairs(reg, group, pairs, failures, tally):
    """Ask every pair in every mode; return how many verdicts were compared."""
    by_old = {}
    for label, old, new in pairs:
        by_old.setdefault(old, []).append((label, new))
    compared = 0
    for n, (old, news) in enumerate(by_old.items()):
        for mode, expected in MODES.items():
            subject = f"{group.replace(' ', '-')}-{n}-{mode.lower()}"
            status, body = reg.call("PUT", f"/config/{subject}", {"compatibility": mode})
            assert status == 200, (status, body)
            status, body = reg.call("POST", f"/subjects/{subject}/versions", {"schema": old})
            if status != 200:
                failures.append(f"registry refused a schema the reference parses ({status} {body}): {old}")
                break
            for label, new in news:
                want = expected(old, new)
                status, body = reg.call(
                    "POST", f"/compatibility/subjects/{subject}/versions/latest?verbose=true", {"schema": new}
                )
                if status != 200:
                    failures.append(f"{label} [{mode}]: HTTP {status} {body}")
                    continue
                compared += 1
                tally[want] += 1
                if body["is_compatible"] != want:
                    failures.append(
                        f"{label} [{mode}]: reference says {want}, registry says {body['is_compatible']}"
                        f" {body.get('messages', [])}\n    old: {old}\n    new: {new}"
                    )
    return compared


def chains():
    """Sequences of versions an operator would register one after another."""
    f = lambda *extra: text(record([field("id", "string"), *extra], name="Chain"))
    a = field("a", "int", default=0)
    a_long = field("a", "long", default=0)
    b = field("b", ["null", "string"], default=None)
    a_req = field("a", "int")
    return {
        "add, widen, drop": [f(), f(a), f(a_long), f(a_long, b), f(b)],
        "required back and forth": [f(), f(a), f(), f(a_req), f(a_long, b)],
        "narrowing after widening": [f(a_long), f(a), f(a_long), f(field("a", "float", default=0.0))],
        "decimal meter": [
            text(METER_V1),
            text(with_fields(METER_V1, METER_V1["fields"] + [b])),
            text(with_fields(METER_V1, METER_V1["fields"][:2] + [b])),
            text(with_fields(METER_V1, METER_V1["fields"][:2])),
        ],
    }


def check_chains(reg, failures):
    compared = 0
    for mode in ("BACKWARD", "FORWARD", "FULL"):
        for transitive in (False, True):
            level = mode + ("_TRANSITIVE" if transitive else "")
            for name, versions in chains().items():
                subject = f"chain-{name.replace(' ', '-').replace(',', '')}-{level.lower()}"
                status, body = reg.call("PUT", f"/config/{subject}", {"compatibility": level})
                assert status == 200, (status, body)
                registered = []
                for i, schema in enumerate(versions):
                    against = registered if transitive else registered[-1:]
                    # A schema the subject already has is answered with its id, unchecked
                    # and without a new version, as Confluent's registry does.
                    again = schema in registered
                    want = again or all(MODES[mode](old, schema) for old in against)
                    status, body = reg.call("POST", f"/subjects/{subject}/versions", {"schema": schema})
                    compared += 1
                    got = status == 200
                    if status not in (200, 409):
                        failures.append(f"chain {name} [{level}] v{i + 1}: HTTP {status} {body}")
                    elif got != want:
                        failures.append(
                            f"chain {name} [{level}] step {i + 1}: reference says {want}, registry answered {status} {body}"
                        )
                    if got and not again:
                        registered.append(schema)
    return compared


def check_divergences(reg, failures):
    for n, (label, old, new, spec) in enumerate(SPEC_OVER_PYTHON):
        subject = f"spec-{n}"
        reg.call("PUT", f"/config/{subject}", {"compatibility": "BACKWARD"})
        status, body = reg.call("POST", f"/subjects/{subject}/versions", {"schema": old})
        assert status == 200, (status, body)
        status, body = reg.call("POST", f"/compatibility/subjects/{subject}/versions/latest", {"schema": new})
        if body.get("is_compatible") != spec:
            failures.append(f"{label}: the specification says {spec}, registry says {body}")
        print(f"spec over python: {label}: weir {spec}, python {reference(new, old)}")


def main():
    reg = Registry(sys.argv[1])
    failures = []
    groups = {
        "apache": list(apache_pairs()),
        "classes": list(class_pairs()),
        "field types": list(field_type_pairs()),
        "evolutions": list(evolution_pairs()),
    }
    total = 0
    tally = {True: 0, False: 0}
    for name, pairs in groups.items():
        n = check_pairs(reg, name, pairs, failures, tally)
        print(f"{name}: {len(pairs)} pairs, {n} verdicts compared")
        total += n
    n = check_chains(reg, failures)
    print(f"chains: {n} registrations compared")
    total += n
    check_divergences(reg, failures)
    for f in failures[:60]:
        print("DISAGREE", f)
    if failures:
        print(f"{len(failures)} disagreements out of {total} verdicts")
        sys.exit(1)
    print(f"pairs: {tally[True]} verdicts compatible, {tally[False]} incompatible per the reference")
    assert min(tally.values()) > 1000, "the corpus must exercise both verdicts"
    print(f"all {total} verdicts agree with the reference")


if __name__ == "__main__":
    main()
