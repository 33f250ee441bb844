"""Conformance of weir's registry with Confluent's own Python client.

Uses confluent-kafka's SchemaRegistryClient, AvroSerializer and AvroDeserializer exactly as
an application would: register, evolve compatibly, get refused on an incompatible change,
round-trip records. Usage: python_client.py http://127.0.0.1:PORT
"""

import json
import sys

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

url = sys.argv[1]
client = SchemaRegistryClient({"url": url})
topic = "py-readings"
subject = f"{topic}-value"
ctx = SerializationContext(topic, MessageField.VALUE)

V1 = json.dumps({
    "type": "record", "name": "Reading", "namespace": "io.weir.test",
    "fields": [{"name": "device_id", "type": "string"}, {"name": "temperature_c", "type": "double"}],
})
V2 = json.dumps({
    "type": "record", "name": "Reading", "namespace": "io.weir.test",
    "fields": [
        {"name": "device_id", "type": "string"},
        {"name": "temperature_c", "type": "double"},
        {"name": "humidity_pct", "type": ["null", "double"], "default": None},
    ],
})
BAD = json.dumps({
    "type": "record", "name": "Reading", "namespace": "io.weir.test",
    "fields": [{"name": "device_id", "type": "long"}],
})

# Serialise with auto-registration, deserialise by the id in the wire format.
ser1 = AvroSerializer(client, V1)
data = ser1({"device_id": "t-1", "temperature_c": 21.5}, ctx)
assert data[0] == 0, "Confluent wire format starts with magic byte 0"
schema_id = int.from_bytes(data[1:5], "big")
de = AvroDeserializer(client)
assert de(data, ctx) == {"device_id": "t-1", "temperature_c": 21.5}

registered = client.get_latest_version(subject)
assert registered.schema_id == schema_id and registered.version == 1, registered

# Evolve compatibly (BACKWARD by default): a new optional field.
id2 = client.register_schema(subject, Schema(V2, "AVRO"))
assert id2 != schema_id
assert client.register_schema(subject, Schema(V2, "AVRO")) == id2, "same schema, same id"
assert client.get_versions(subject) == [1, 2]
assert client.test_compatibility(subject, Schema(V2, "AVRO")) is True
looked_up = client.lookup_schema(subject, Schema(V1, "AVRO"))
assert looked_up.version == 1 and looked_up.schema_id == schema_id

ser2 = AvroSerializer(client, V2)
data2 = ser2({"device_id": "t-2", "temperature_c": 19.0, "humidity_pct": 40.5}, ctx)
assert de(data2, ctx) == {"device_id": "t-2", "temperature_c": 19.0, "humidity_pct": 40.5}
# Old data still decodes through its own id.
assert de(data, ctx) == {"device_id": "t-1", "temperature_c": 21.5}

# An incompatible change is refused with 409.
assert client.test_compatibility(subject, Schema(BAD, "AVRO")) is False
try:
    client.register_schema(subject, Schema(BAD, "AVRO"))
    raise AssertionError("incompatible schema was accepted")
except SchemaRegistryError as e:
    assert e.http_status_code == 409, e

# Config round trip and error codes as the client sees them.
client.set_compatibility(subject_name=subject, level="FULL")
assert client.get_compatibility(subject) == "FULL"
try:
    client.get_version(subject, 99)
    raise AssertionError("missing version was found")
except SchemaRegistryError as e:
    assert e.error_code == 40402, e
assert subject in client.get_subjects()
assert client.delete_subject(subject) == [1, 2]
assert subject not in client.get_subjects()

# A record holding a decimal evolves under BACKWARD: a new optional field is accepted, and
# records round-trip with their Decimal values through both versions.
from decimal import Decimal

meter_topic = "py-meters"
meter_subject = f"{meter_topic}-value"
meter_ctx = SerializationContext(meter_topic, MessageField.VALUE)
METER_FIELDS = [
    {"name": "meter_id", "type": "string"},
    {"name": "kwh", "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 3}},
]
METER_V1 = json.dumps({"type": "record", "name": "MeterReading", "namespace": "io.weir.meters", "fields": METER_FIELDS})
METER_V2 = json.dumps({
    "type": "record", "name": "MeterReading", "namespace": "io.weir.meters",
    "fields": METER_FIELDS + [{"name": "tariff", "type": ["null", "string"], "default": None}],
})
assert client.get_compatibility() == "BACKWARD"
meter1 = client.register_schema(meter_subject, Schema(METER_V1, "AVRO"))
assert client.test_compatibility(meter_subject, Schema(METER_V2, "AVRO")) is True
meter2 = client.register_schema(meter_subject, Schema(METER_V2, "AVRO"))
assert meter2 != meter1 and client.get_versions(meter_subject) == [1, 2]
reading1 = AvroSerializer(client, METER_V1, conf={"auto.register.schemas": False, "use.latest.version": False})(
    {"meter_id": "m-1", "kwh": Decimal("1234.567")}, meter_ctx
)
reading2 = AvroSerializer(client, METER_V2, conf={"auto.register.schemas": False})(
    {"meter_id": "m-2", "kwh": Decimal("0.001"), "tariff": "night"}, meter_ctx
)
assert de(reading1, meter_ctx) == {"meter_id": "m-1", "kwh": Decimal("1234.567")}
assert de(reading2, meter_ctx) == {"meter_id": "m-2", "kwh": Decimal("0.001"), "tariff": "night"}
# The decimal field turned into a double is refused.
METER_BAD = json.dumps({
    "type": "record", "name": "MeterReading", "namespace": "io.weir.meters",
    "fields": [{"name": "meter_id", "type": "string"}, {"name": "kwh", "type": "double"}],
})
assert client.test_compatibility(meter_subject, Schema(METER_BAD, "AVRO")) is False

print("python confluent-kafka client: all checks passed")
