"""Pure parts of the HAProxy edge: registry records -> map entries -> ops, and the config renderer."""
from __future__ import annotations

import json
import re
import zlib

import pytest

from netagent.edge.haconfig import EdgeSettings, render, shard_map
from netagent.edge.maps import MapMirror, MapOp, entries_from_json, record_entries, shard_of
from netagent.registry import PortRecord, SandboxRecord
from netagent.registry.records import READABLE_VERSIONS

SHA = "ab" * 32


def rec(sid: str = "abc", *ports: PortRecord, seq: int = 1, address: str = "10.0.0.7") -> SandboxRecord:
    return SandboxRecord(sid, "n1", address, seq, 0.0, ports)


def port(guest: int = 3000, host: int = 30001, reachable: bool | None = True, **kw: object) -> PortRecord:
    return PortRecord(guest, "tcp", host, reachable, 0.0, 0.0, **kw)  # type: ignore[arg-type]


def test_entries_of_a_record() -> None:
    r = rec("abc", port(3000, 30001), port(8080, 30002, False),
            port(9000, 30003, public=False, token_sha256=SHA.upper(), host_mask="localhost:{port}"),
            PortRecord(53, "udp", 30004, None, 0.0, 0.0))
    assert record_entries(r) == {
        "abc": "1",
        "abc/3000": "10.0.0.7|30001||",
        "abc/8080": "10.0.0.7|30002|||closed",               # probed closed: tried, 502 if the connect fails
        "abc/9000": f"10.0.0.7|30003|{SHA}|localhost:9000",  # udp is not HTTP
    }



def test_a_tcp_port_has_its_own_key_so_each_path_serves_its_own_ports() -> None:
    r = rec("abc", port(3000, 30001), port(22, 30002, mode="tcp"), port(23, 30003, mode="quic"))
    assert record_entries(r) == {"abc": "1", "abc/3000": "10.0.0.7|30001||", "abc/22/tcp": "10.0.0.7|30002||"}
    assert entries_from_json("abc", r.to_json()) == record_entries(r)      # an unknown mode: on neither path

@pytest.mark.parametrize("sid", ["Upper", "a_b", "a.b", "x" * 62])
def test_ids_the_host_form_cannot_name_get_no_entries(sid: str) -> None:
    assert record_entries(rec(sid, port())) == {}


def test_private_port_with_an_unusable_hash_admits_no_token() -> None:
    assert record_entries(rec("abc", port(public=False)))["abc/3000"] == "10.0.0.7|30001|!|"
    assert record_entries(rec("abc", port(public=False, token_sha256="zz")))["abc/3000"].split("|")[2] == "!"


def test_tombstone_has_no_entries() -> None:
    assert record_entries(SandboxRecord.tombstone("abc", "n1", 2, 0.0)) == {}


def test_shard_matches_haproxys_crc32() -> None:
    # HAProxy: var(txn.sid),crc32,mod(64) (checked against haproxy 2.6: crc32("abc") = 891568578)
    assert zlib.crc32(b"abc") == 891568578 and shard_of("abc", 64) == 891568578 % 64


def test_entries_from_json_match_the_record_and_refuse_what_they_cannot_read() -> None:
    r = rec("abc", port(3000, 30001), port(9000, 30003, public=False, token_sha256=SHA, host_mask="h:{port}"))
    assert entries_from_json("abc", r.to_json()) == record_entries(r)
    assert entries_from_json("abc", None) == {}
    assert entries_from_json("abc", SandboxRecord.tombstone("abc", "n1", 2, 0.0).to_json()) == {}
    newer = json.dumps({**json.loads(r.to_json()), "v": max(READABLE_VERSIONS) + 1})
    for raw in (newer, "not json", "[]", '{"v": 1}', r.to_json().replace('"abc"', '"xyz"')):
        assert entries_from_json("abc", raw) == {"abc": "1"}       # known, every port 502
    assert entries_from_json("abc", rec("abc", port(), address="1.2.3.4 evil").to_json())["abc/3000"] == "|||"


def test_mirror_turns_changes_into_few_ops_in_a_safe_order() -> None:
    mirror = MapMirror(shards=4)
    s = shard_of("abc", 4)
    mirror.reset({})

    def update(r: SandboxRecord) -> list[MapOp]:
        return mirror.replace(r.sandbox_id, record_entries(r))
    assert update(rec("abc", port())) == [MapOp("add", s, "abc", "1"), MapOp("add", s, "abc/3000", "10.0.0.7|30001||")]
    assert update(rec("abc", port(), seq=2)) == []                     # a heartbeat changes nothing
    assert update(rec("abc", port(reachable=False), port(4000), seq=3)) == [
        MapOp("set", s, "abc/3000", "10.0.0.7|30001|||closed"),
        MapOp("add", s, "abc/4000", "10.0.0.7|30001||")]
    assert mirror.replace("abc", {}) == [MapOp("del", s, "abc/3000"), MapOp("del", s, "abc/4000"),
                                         MapOp("del", s, "abc")]      # the sandbox entry last
    assert mirror.replace("abc", {}) == []


def test_reset_puts_every_entry_in_its_shard() -> None:
    mirror = MapMirror(shards=8)
    by_sandbox = {f"s{i}": record_entries(rec(f"s{i}", port())) for i in range(100)}
    shards = mirror.reset({**by_sandbox, "newer": {"newer": "1"}, "Upper": {}})
    assert sorted(shards) == list(range(8))
    assert sum(len(e) for e in shards.values()) == 201
    assert shards[shard_of("s7", 8)]["s7/3000"] == "10.0.0.7|30001||"
    assert shards[shard_of("newer", 8)]["newer"] == "1"
    assert mirror.replace("s7", record_entries(rec("s7", port(), seq=9))) == []


def settings(**kw: object) -> EdgeSettings:
    base = dict(domain="sbx.example.test", map_dir="/var/lib/e/maps", admin_socket="/run/e/admin.sock",
                errors_dir="/var/lib/e/errors", shards=4)
    return EdgeSettings(**{**base, **kw})  # type: ignore[arg-type]


def test_render_names_every_shard_and_no_sandbox() -> None:
    text = render(settings(https_listen=("0.0.0.0:443",), tls_pem="/etc/e/edge.pem"))
    for i in range(4):
        assert text.count(f"map({shard_map('/var/lib/e/maps', i)})") == 2
        assert f"backend shard{i}\n" in text
    assert "bind 0.0.0.0:443 ssl crt /etc/e/edge.pem alpn h2,http/1.1 strict-sni" in text
    assert "redirect location https://%[var(txn.host)]%[pathq] code 308" in text
    assert "\\.sbx\\.example\\.test$" in text
    assert not re.search(r"\$[a-z_{]", text)           # every placeholder filled


def test_render_options() -> None:
    text = render(settings(https_listen=(":8443",), tls_pem="/e.pem", https_public_port=8443,
                           token_header="X-Key", trust_forwarded=True))
    assert "https://%[var(txn.host)]:8443%[pathq]" in text
    assert "req.hdr(X-Key,1),sha2(256)" in text and "del-header X-Key" in text
    assert "del-header X-Forwarded-For" not in text
    assert "redirect" not in render(settings(https_listen=(":8443",), tls_pem="/e.pem", redirect_to_https=False)
                                    ).replace("no redirect", "")
    assert "del-header X-Forwarded-For" in render(settings())


def test_render_the_443_front_moves_the_public_https_bind_behind_it() -> None:
    text = render(settings(https_listen=("0.0.0.0:443",), tls_pem="/e.pem", tcp_on_https=True))
    assert "frontend https_front\n" in text and "\n    bind 0.0.0.0:443\n" in text         # no TLS on the front
    assert "bind unix@/run/e/edge-https.sock accept-proxy ssl crt /e.pem alpn h2,http/1.1 strict-sni" in text
    assert "bind unix@/run/e/edge-tcp.sock accept-proxy ssl crt /e.pem strict-sni" in text
    assert text.count("send-proxy-v2") == 1 + 2 * 4                   # to_https, and both servers per shard
    assert "0.0.0.0:443 ssl" not in text


@pytest.mark.parametrize("bad", [
    {"domain": "Bad Domain"}, {"domain": "x.test; evil"}, {"map_dir": "relative"}, {"admin_socket": "/a b"},
    {"http_listen": ("8080",)}, {"https_listen": (":443",)}, {"token_header": "X Token"},
    {"token_cookie": "a;b"}, {"shards": 0}, {"url_signing_key": b"too short"}, {"http_listen": (), "https_listen": ()},
    {"tcp_on_https": True},                                     # the front needs https listeners
])
def test_render_refuses_bad_settings(bad: dict) -> None:
    with pytest.raises(ValueError):
        render(settings(**bad))
