"""Registry records (schema v1): JSON round trips and refusal of anything else."""
from __future__ import annotations

import json

import pytest

from netagent.registry.records import SCHEMA_VERSION, NodeRecord, PortRecord, SandboxRecord


def port(guest_port: int, protocol: str = "tcp", reachable: bool | None = True) -> PortRecord:
    return PortRecord(guest_port, protocol, 30000 + guest_port, reachable, changed_at=10.5, checked_at=11.25)


def test_sandbox_record_round_trip_and_wire_shape() -> None:
    record = SandboxRecord("sbx-1", "node-a", "10.0.0.1", 42, 12.0,
                           ports=(port(8080), port(53, "udp", reachable=None), port(22)))
    raw = record.to_json()
    assert SandboxRecord.from_json(raw) == record
    assert SandboxRecord.from_json(raw.encode()) == record
    doc = json.loads(raw)
    assert doc["v"] == SCHEMA_VERSION == 2
    assert set(doc) == {"sandbox_id", "node_id", "node_address", "seq", "updated_at", "ports", "deleted", "v"}
    assert set(doc["ports"]) == {"22/tcp", "53/udp", "8080/tcp"}
    assert doc["ports"]["53/udp"]["reachable"] is None
    assert [p.key for p in record.ports] == ["22/tcp", "53/udp", "8080/tcp"]  # canonical order
    assert record.port(53, "udp").host_port == 30053 and record.port(53) is None


def test_tombstone_round_trip() -> None:
    tomb = SandboxRecord.tombstone("sbx-1", "node-a", 7, 99.0)
    assert tomb.deleted and tomb.ports == () and tomb.node_address == ""
    assert SandboxRecord.from_json(tomb.to_json()) == tomb


def test_node_record_round_trip() -> None:
    node = NodeRecord("node-a", "10.0.0.1", 123.5, version="0.1.0", sandboxes=3, extra={"zone": "z1"})
    assert NodeRecord.from_json(node.to_json()) == node


@pytest.mark.parametrize("version", [0, 3, "1", "2", None])
def test_other_versions_are_refused(version: object) -> None:
    sandbox = json.loads(SandboxRecord("s", "n", "a", 1, 1.0).to_json())
    node = json.loads(NodeRecord("n", "a", 1.0).to_json())
    for doc, cls in ((sandbox, SandboxRecord), (node, NodeRecord)):
        doc["v"] = version
        with pytest.raises(ValueError, match="unsupported .* version"):
            cls.from_json(json.dumps(doc))


def test_v1_records_of_older_agents_are_still_read() -> None:
    sandbox = SandboxRecord("s", "n", "a", 1, 1.0, v=1)
    assert SandboxRecord.from_json(sandbox.to_json()) == sandbox and not sandbox.lives_with_node
    assert SandboxRecord("s", "n", "a", 1, 1.0).lives_with_node          # v2: lives while its node does


@pytest.mark.parametrize("raw", ["not json", "[]", '{"v": 1}', '{"v": 1, "sandbox_id": "s", "surprise": 1}'])
def test_malformed_records_raise_value_error(raw: str) -> None:
    with pytest.raises(ValueError):
        SandboxRecord.from_json(raw)
    with pytest.raises(ValueError):
        NodeRecord.from_json(raw)


def test_edge_access_fields_are_written_only_when_set() -> None:
    """A public, unmasked port reads exactly as before the fields existed (an older
    edge still serves it); a private port round-trips and an older reader refuses it."""
    public = SandboxRecord("s", "n", "a", 1, 1.0, (PortRecord(80, "tcp", 30000, True, 1.0, 2.0),))
    assert set(json.loads(public.to_json())["ports"]["80/tcp"]) == {
        "guest_port", "protocol", "host_port", "reachable", "changed_at", "checked_at"}
    private = SandboxRecord("s", "n", "a", 1, 1.0, (PortRecord(80, "tcp", 30000, True, 1.0, 2.0, public=False,
                                                               token_sha256="ab" * 32, host_mask="localhost:80"),))
    doc = json.loads(private.to_json())["ports"]["80/tcp"]
    assert (doc["public"], doc["token_sha256"], doc["host_mask"]) == (False, "ab" * 32, "localhost:80")
    assert SandboxRecord.from_json(private.to_json()) == private
    tcp = SandboxRecord("s", "n", "a", 1, 1.0, (PortRecord(22, "tcp", 30000, True, 1.0, 2.0, mode="tcp"),))
    assert json.loads(tcp.to_json())["ports"]["22/tcp"]["mode"] == "tcp"     # "http", the default, is not written
    assert SandboxRecord.from_json(tcp.to_json()) == tcp
