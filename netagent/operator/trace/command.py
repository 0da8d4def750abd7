"""`netagent trace`: what happens to one packet, told by nftables' own tracer.

1. add the table `inet <prefix>_trace_<pid>` (table.py): trace on for the
   crafted packet only, and drop it after the agent's rules judged it;
2. start `nft monitor` in the host netns, wait until it reports that table;
3. inject the packet (inject.py), from the slot's veth or a temporary veth;
4. read the trace, then remove the table (and the veth) whatever happened;
5. put the path and the verdict in words (explain.py).
"""
from __future__ import annotations

import ipaddress
import queue
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from ...config import Config
from ...firewall import names
from ...firewall.nft import connect
from ...policy import NetPort, parse_entry
from ..kernel import in_netns
from . import explain, inject
from . import table as tracetable
from .table import Probe

INGRESS_SOURCE = "203.0.113.254"   # TEST-NET-3: never a real client
SEND_ATTEMPTS = 3


class UsageError(ValueError):
    """The command line asked for a trace that cannot be made."""


class Monitor:
    """`nft monitor` in the host netns, read line by line on a thread."""

    def __init__(self, host_netns: str | None):
        self.cmd = (["nsenter", f"--net={host_netns}"] if host_netns else []) + ["nft", "monitor"]
        self.lines: queue.Queue[str] = queue.Queue()
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> Monitor:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, predicate: Callable[[str], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if predicate(line):
                return True
        return False

    def collect(self, done: Callable[[str], bool], quiet: float = 0.3, timeout: float = 1.0) -> list[str]:
        """Trace lines until `done` matched one, or nothing came for `quiet` s."""
        out: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=quiet)
            except queue.Empty:
                if out:
                    break
                continue
            if line.startswith("trace id "):
                out.append(line)
                if done(line):
                    break
        return out

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def run(config: Config, probe: Probe, prepare: Callable[[], Callable[[], None]],
        veth: str | None = None) -> list[explain.Step]:
    """Trace one packet; the table (and veth) are removed whatever happens.
    `prepare` makes what the packet needs and returns the function that sends it."""
    host = config.host_netns
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)   # so the finally below still runs
    in_netns(host, lambda: tracetable.remove_tables(remove_stale_links(tracetable.stale(config.prefix))))
    table = tracetable.name(config.prefix)
    monitor = Monitor(host)
    try:
        in_netns(host, lambda: tracetable.create(table, probe, veth))
        # Started after the table exists: nft monitor names the rules of a
        # trace from the ruleset it read when it started.
        monitor.start()
        _synchronise(monitor, host, table)
        send = prepare()
        lines: list[str] = []
        for _ in range(SEND_ATTEMPTS):   # a fresh link may drop the first frame: send again
            send()
            lines = monitor.collect(lambda line: f"inet {table} stop_" in line and "(verdict drop)" in line)
            if lines:
                break
    finally:
        monitor.stop()
        if veth:
            in_netns(host, lambda: inject.delete_link(veth))
        in_netns(host, lambda: tracetable.delete(table))
    return explain.ours(explain.parse(lines), table)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _synchronise(monitor: Monitor, host: str | None, table: str) -> None:
    """Wait until the monitor is subscribed: add marker sets to our table until
    it reports one (a trace sent before that would go unseen)."""
    for i in range(25):
        in_netns(host, lambda i=i: connect().run(f"add set inet {table} sync{i} {{ type ipv4_addr; }}"))
        if monitor.wait_for(lambda line: f"inet {table} sync" in line, 0.2):
            return
    raise RuntimeError("nft monitor reported nothing from the host netns within 5 s")


def remove_stale_links(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Delete the veths of stale trace tables (calling thread's netns); returns the objects."""
    for o in objects:
        if o["kind"] == "link":
            inject.delete_link(o["name"])
    return objects


def from_sandbox(config: Config, sandbox: dict[str, Any], to: str, proto: str | None,
                 uplinks: list[str]) -> dict[str, Any]:
    """Trace a packet the sandbox sends to `to` (ADDR or ADDR:PORT)."""
    addr, port = _split(to)
    proto = proto or ("tcp" if port is not None else "icmp")
    if proto != "icmp" and port is None:
        raise UsageError(f"--proto {proto} needs a port: --to ADDR:PORT")
    net = sandbox["network"]
    probe = Probe(iif=net["hostVeth"], saddr=net["sandboxIp"], daddr=addr, proto=proto,
                  ip_id=random.randint(1, 65535), sport=None if proto == "icmp" else random.randint(40000, 60999),
                  dport=None if proto == "icmp" else port)
    slot_veth, slot_ns = config.guest.veth_name, net["netnsPath"]
    dst_mac = in_netns(config.host_netns, lambda: inject.link_mac(net["hostVeth"]))
    src_mac = in_netns(slot_ns, lambda: inject.link_mac(slot_veth))
    data = inject.frame(probe, src_mac, dst_mac)
    facts = _facts(config, probe, uplinks)
    policy = sandbox.get("policy", {})
    facts.allow_entry = _matching_entry(policy.get("allowOut", []), addr, proto, port)
    facts.deny_entry = _matching_entry(policy.get("denyOut", []), addr, proto, port)
    steps = run(config, probe, lambda: lambda: in_netns(slot_ns, lambda: inject.send_frame(slot_veth, data)))
    return _result(f"from sandbox {sandbox['sandboxId']} ({net['sandboxIp']}) to {to} ({proto})",
                   probe, steps, facts)


def from_internet(config: Config, sandboxes: list[dict[str, Any]], host_port: int, proto: str,
                  uplinks: list[str]) -> dict[str, Any]:
    """Trace a packet from the internet to uplink-address:host_port."""
    if not uplinks:
        raise UsageError("the agent reports no uplink address to trace to")
    tag = f"{random.randint(0, 0xFFFF):04x}"
    send_end, receive_end = f"{config.prefix}x{tag}", f"{config.prefix}y{tag}"
    probe = Probe(iif=receive_end, saddr=INGRESS_SOURCE, daddr=uplinks[0], proto=proto,
                  ip_id=random.randint(1, 65535), sport=random.randint(40000, 60999), dport=host_port)
    facts = _facts(config, probe, uplinks)
    facts.dnat = _exposed(sandboxes, host_port, proto)

    def prepare() -> Callable[[], None]:
        mac = in_netns(config.host_netns, lambda: inject.add_pair(send_end, receive_end))
        data = inject.frame(probe, "02:00:00:00:00:fe", mac)
        return lambda: in_netns(config.host_netns, lambda: inject.send_frame(send_end, data))
    steps = run(config, probe, prepare, veth=send_end)
    result = _result(f"from the internet ({INGRESS_SOURCE}) to {uplinks[0]}:{host_port} ({proto})",
                     probe, steps, facts)
    if in_netns(config.host_netns, inject.strict_rp_filter) and result["verdict"] != "accepted":
        result["note"] = ("net.ipv4.conf.all.rp_filter=1 in the host netns: the kernel drops the injected "
                          "packet before forwarding, so this trace cannot follow real ingress traffic")
    return result


def _result(what: str, probe: Probe, steps: list[explain.Step], facts: explain.Facts) -> dict[str, Any]:
    outcome = explain.explain(steps, facts)
    return {"trace": what, "probe": probe.to_dict(), "verdict": outcome.verdict, "words": outcome.words,
            "outInterface": outcome.out_interface, "path": explain.path(steps),
            "steps": [s.to_dict() for s in steps]}


def _facts(config: Config, probe: Probe, uplinks: list[str]) -> explain.Facts:
    def lookup() -> tuple[str | None, str | None]:
        return (_interval(config.prefix, names.ALWAYS_DENY, probe.daddr),
                _interval(config.prefix, names.ALWAYS_ALLOW, probe.daddr))
    deny, allow = in_netns(config.host_netns, lookup)
    return explain.Facts(table=config.prefix, trace_table=tracetable.name(config.prefix), daddr=probe.daddr,
                            proto=probe.proto, port=probe.dport, always_deny=deny, always_allow=allow,
                            uplink_addresses=uplinks)


def _interval(table: str, set_name: str, addr: str) -> str | None:
    """The element of an interval set that holds addr, as the kernel lists it
    (a CIDR or a range). `get element` answers in text whatever the output mode."""
    return connect().lookup_interval(table, set_name, addr)


def _matching_entry(entries: list[str], addr: str, proto: str, port: int | None) -> str | None:
    ip = ipaddress.IPv4Address(addr)
    for entry in entries:
        try:
            parsed = parse_entry(entry, "policy")
        except Exception:  # noqa: BLE001 - the agent accepted it; skip what we cannot read
            continue
        if isinstance(parsed, NetPort) and ip in parsed.net and (
                parsed.port is None or (proto in ("tcp", "udp") and parsed.port == port)):
            return entry
    return None


def _exposed(sandboxes: list[dict[str, Any]], host_port: int, proto: str) -> dict[str, Any] | None:
    for s in sandboxes:
        for p in s.get("ports", []):
            if int(p["hostPort"]) == host_port and p.get("protocol", "").lower().endswith(proto):
                net = s["network"]
                return {"sandbox": s["sandboxId"], "sandbox_ip": net["sandboxIp"], "guest_ip": net["guestIp"],
                        "guest_port": int(p["guestPort"])}
    return None


def _split(to: str) -> tuple[str, int | None]:
    addr, sep, port = to.rpartition(":") if ":" in to else (to, "", "")
    try:
        ipaddress.IPv4Address(addr)
    except ValueError:
        raise UsageError(f"--to {to!r}: not an IPv4 address (ADDR or ADDR:PORT)") from None
    if sep and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise UsageError(f"bad port in {to!r}")
    return addr, int(port) if sep else None
