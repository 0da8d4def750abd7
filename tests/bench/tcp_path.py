"""urls_bench's `tcp` part: raw TCP through a real HAProxy edge on loopback, native clients.

Throughput: iperf3 (one stream, --seconds per run) against `iperf3 -s` standing for the
guest port, three ways, in alternating rounds (load drifts hit all alike):
  direct     iperf3 -c straight to the server's port (plain TCP: what the DNATed port
             carries, without the DNAT itself)
  listener   iperf3 -c -> socat (the TLS client: OPENSSL with the port's SNI) -> the
             edge's --tcp-listen -> the server
  front443   the same through the HTTPS listener with --tcp-on-https (the SNI front,
             one hop over a unix socket with PROXY v2, then the TCP termination)
  socat_plain  iperf3 -c -> socat (plain TCP) -> the server: the relay's own cost,
             to tell it from TLS and the edge
The edge's ratio counts socat's TLS work too: a client of the edge does TLS anyway.
Connect: time from connect to the first answer of a small sink, serial (Python's TLS
client: no native tool both sets the SNI and times one connection).
"""
from __future__ import annotations

import asyncio
import json
import socket
import ssl
import statistics
import subprocess
import time
from pathlib import Path

from netagent.registry.sqlite import SqliteRegistry
from tests.bench.run import summary
from tests.edge.hap import DOMAIN, eventually, running_edge
from tests.edge.helpers import LOOPBACK
from tests.edge.test_haproxy_tcp import tcp_sandbox
from tests.testbed.haproxy_proc import loopback_port
from tests.testbed.tls import wildcard_pem

IPERF_GUEST_PORT, SINK_GUEST_PORT = 5201, 5432


def iperf3(port: int, seconds: int) -> float:
    """Bytes/s the server received in one iperf3 run to 127.0.0.1:port."""
    res = subprocess.run(["iperf3", "-c", LOOPBACK, "-p", str(port), "-t", str(seconds), "-J"],
                         capture_output=True, text=True, timeout=seconds + 30)
    doc = json.loads(res.stdout)
    if "error" in doc:
        raise RuntimeError(doc["error"])
    return doc["end"]["sum_received"]["bits_per_second"] / 8


def socat_bridge(listen: int, edge_port: int, sni: str, ca: Path | None) -> subprocess.Popen[bytes]:
    """socat listening on `listen` (returned once it listens), each connection TLS to the
    edge (ca None: plain TCP to the port)."""
    target = (f"OPENSSL:{LOOPBACK}:{edge_port},snihost={sni},commonname={sni},cafile={ca},verify=1" if ca
              else f"TCP:{LOOPBACK}:{edge_port}")
    proc = subprocess.Popen(["socat", "-b", str(1 << 18), f"TCP-LISTEN:{listen},bind={LOOPBACK},fork,reuseaddr",
                             target],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not _bound(listen):           # probing by bind, not connect: no stray iperf3 connection
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("socat did not start listening")
        time.sleep(0.02)
    return proc


def _bound(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return True
        return False


async def _sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers b"ok" to the first byte (the connect-time client's ping)."""
    try:
        await reader.readexactly(1)
        writer.write(b"ok")
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def first_answer(port: int, ctx: ssl.SSLContext | None, sni: str) -> float:
    """Seconds from connect (and handshake) to the sink's answer."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(LOOPBACK, port, ssl=ctx, server_hostname=sni if ctx else None)
    try:
        writer.write(b"p")
        assert await reader.readexactly(2) == b"ok"
        return time.monotonic() - started
    finally:
        writer.close()


async def tcp_path(workdir: Path, seconds: int = 3, connects: int = 200, rounds: int = 3) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    ca, pem = wildcard_pem(workdir / "pki", DOMAIN)
    iperf_port = loopback_port()
    server = subprocess.Popen(["iperf3", "-s", "-B", LOOPBACK, "-p", str(iperf_port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sink = await asyncio.start_server(_sink, LOOPBACK, 0)
    registry = SqliteRegistry(f"sqlite:///{workdir}/registry.db")
    await registry.connect()
    bridges: list[subprocess.Popen[bytes]] = []
    rates: dict[str, list[float]] = {}
    out: dict = {"setup": {"seconds": seconds, "rounds": rounds, "tool": "iperf3 -c (1 stream) [-> socat OPENSSL]"}}
    try:
        await registry.put_sandbox(tcp_sandbox("tcpb", {IPERF_GUEST_PORT: iperf_port,
                                                        SINK_GUEST_PORT: sink.sockets[0].getsockname()[1]}), ttl_s=600)
        listener, front = loopback_port(), loopback_port()
        async with running_edge(workdir / "edge", registry, tls_pem=str(pem), tcp_listen=(f"{LOOPBACK}:{listener}",),
                                https_listen=(f"{LOOPBACK}:{front}",), tcp_on_https=True):
            ctx = ssl.create_default_context(cafile=str(ca))
            sink_sni = f"{SINK_GUEST_PORT}-tcpb.{DOMAIN}"
            ways = {"direct": (sink.sockets[0].getsockname()[1], None), "listener": (listener, ctx),
                    "front443": (front, ctx)}
            for port, c in ways.values():
                await eventually(lambda port=port, c=c: _answers(port, c, sink_sni), timeout_s=10)
            iperf_ports = {"direct": iperf_port}
            for name, edge_port, tls in (("listener", listener, ca), ("front443", front, ca),
                                         ("socat_plain", iperf_port, None)):
                iperf_ports[name] = loopback_port()
                bridges.append(socat_bridge(iperf_ports[name], edge_port, f"{IPERF_GUEST_PORT}-tcpb.{DOMAIN}", tls))
            rates = {name: [] for name in iperf_ports}
            for _ in range(rounds):
                for name, port in iperf_ports.items():
                    rates[name].append(await asyncio.to_thread(iperf3, port, seconds))
            for name in rates:
                out[name] = {"mbytes_per_s": round(statistics.median(rates[name]) / 1e6, 1),
                             "per_round_mbytes_per_s": [round(r / 1e6, 1) for r in rates[name]]}
            for name, (port, c) in ways.items():
                out[name]["connect_ms"] = summary([await first_answer(port, c, sink_sni) * 1000
                                                   for _ in range(connects)])
    finally:
        for proc in [*bridges, server]:
            proc.terminate()
            proc.wait(timeout=10)
        sink.close()
        await registry.close()
    for name in ("listener", "front443", "socat_plain"):
        ratios = [edge / direct for edge, direct in zip(rates[name], rates["direct"], strict=True)]
        out[f"{name}_over_direct"] = {"throughput_ratio": round(statistics.median(ratios), 3)}  # each round's own
        if "connect_ms" in out[name]:
            out[f"{name}_over_direct"]["added_connect_p50_ms"] = round(
                out[name]["connect_ms"]["p50"] - out["direct"]["connect_ms"]["p50"], 3)
    return out


async def _answers(port: int, ctx: ssl.SSLContext | None, sni: str) -> bool:
    try:
        await first_answer(port, ctx, sni)
        return True
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
        return False
