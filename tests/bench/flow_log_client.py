"""Both ends of the connection-log bench (tests/bench/flow_log_bench.py).

    python -m tests.bench.flow_log_client serve PORT
        (in the internet netns) a TCP server on every address: answers one byte
        to one byte, then closes. Prints "ready".
    python -m tests.bench.flow_log_client connect SOCKET SANDBOXES RATE SECONDS PORT HOST_NETNS
        fills the host to SANDBOXES sandboxes over gRPC (pins their veth
        neighbours: pin_neighbours), waits for a line on
        stdin, then opens RATE connections a second for SECONDS, round robin
        over the sandboxes: each made inside the sandbox's slot netns (source:
        the sandbox IP, through the host's forwarding path like a guest's
        flow), one byte each way, closed with FINs. Prints JSON lines:
        {"filled", "seconds"}, then {"made", "failed", "missed", "lag_s", "start", "end",
        "flows": [[sandbox IP, source port] of each connection made]}.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from netagent import netns
from netagent.client import Client
from tests.testbed.bed import WEB_IP

THREADS = 8


def say(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


async def _serve(port: int) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if await reader.read(1):
                writer.write(b"y")
                await writer.drain()
        finally:
            writer.close()
    server = await asyncio.start_server(answer, "0.0.0.0", port, backlog=4096)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def pin_neighbours(host_netns: str, nets: list) -> None:
    """Permanent neighbour entries for both ends of every slot's veth pair.
    The kernel's neighbour table is shared by every netns, and its default
    gc_thresh3 (1,024 entries, set only in the root netns) overflows with
    2,000 slots talking at once (`neighbor table overflow`, connects fail);
    permanent entries do not count against it. A test-bed setting that keeps
    the bench about the flow record (docs/operations.md says what a host needs)."""
    from pyroute2 import IPRoute
    host_path = netns.path_of(host_netns)
    with netns.entered(host_path), IPRoute() as ipr:
        macs = {link.get("ifname"): (link["index"], link.get("address")) for link in ipr.get_links()}
    peers = []
    for n in nets:
        with netns.entered(n.netns_path), IPRoute() as ipr:
            [veth] = ipr.link_lookup(ifname="veth0")
            mac = ipr.get_links(veth)[0].get("address")
            index, host_mac = macs[n.host_veth]
            host_ip = str(ipaddress.IPv4Address(n.sandbox_ip) - 1)
            ipr.neigh("replace", dst=host_ip, lladdr=host_mac, ifindex=veth, state=0x80)   # NUD_PERMANENT
        peers.append((n.sandbox_ip, mac, index))
    with netns.entered(host_path), IPRoute() as ipr:
        for ip, mac, index in peers:
            ipr.neigh("replace", dst=ip, lladdr=mac, ifindex=index, state=0x80)


def connect_once(fd: int, home: int, port: int) -> tuple[str, int] | None:
    """One connection from the netns `fd`: the socket is made there (it keeps
    its netns), then used from this thread's home netns."""
    netns.setns(fd)
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    finally:
        netns.setns(home)
    try:
        sock.settimeout(5)
        sock.connect((WEB_IP, port))
        sock.sendall(b"x")
        return sock.getsockname() if sock.recv(1) == b"y" else None
    except OSError:
        return None
    finally:
        sock.close()


def run(fds: list[int], rate: float, seconds: float, port: int) -> dict:
    """Open loop over THREADS threads: connection k is due at start + k / rate;
    those not started by the end are `missed` (a loaded host shows as fewer)."""
    planned = int(rate * seconds)
    counts: dict = {"made": 0, "failed": 0, "lag_s": 0.0, "flows": []}
    lock = threading.Lock()
    start = time.monotonic() + 0.2

    def worker(t: int) -> None:
        home = netns.current_fd()
        made = failed = 0
        lag = 0.0
        flows = []
        for k in range(t, planned, THREADS):
            due = start + k / rate
            now = time.monotonic()
            if now >= start + seconds:
                break
            if now < due:
                time.sleep(due - now)
            lag = max(lag, time.monotonic() - due)
            if (source := connect_once(fds[k % len(fds)], home, port)) is not None:
                made += 1
                flows.append(source)
            else:
                failed += 1
        os.close(home)
        with lock:
            counts["made"] += made
            counts["failed"] += failed
            counts["flows"] += flows
            counts["lag_s"] = max(counts["lag_s"], lag)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    done = counts["made"] + counts["failed"]
    return {**counts, "missed": planned - done, "lag_s": round(counts["lag_s"], 3), "start": start,
            "end": time.monotonic(), "start_unix": time.time() - (time.monotonic() - start)}


def main() -> None:
    if sys.argv[1] == "serve":
        asyncio.run(_serve(int(sys.argv[2])))
        return
    sock_path, count, rate, seconds, port, host_netns = sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), \
        float(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
    with Client(socket_path=sock_path, timeout=120) as client:
        client.host_info()
        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            nets = list(pool.map(lambda k: client.allocate(f"fl-{k}", timeout=300).network, range(count)))
        filled = time.monotonic() - t0
    pin_neighbours(host_netns, nets)
    say({"filled": count, "seconds": round(filled, 2)})
    fds = [os.open(n.netns_path, os.O_RDONLY | os.O_CLOEXEC) for n in nets]
    sys.stdin.readline()   # the bench lets the host settle, then says go
    say(run(fds, rate, seconds, port))


if __name__ == "__main__":
    main()
