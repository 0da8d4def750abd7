"""The operator's debugging commands against a daemon in the test bed:
trace (with proof that no trace packet leaves the uplink), capture, top, ls rates."""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from types import SimpleNamespace
from typing import Any

from netagent.operator.kernel import in_netns
from tests.testbed import sh
from tests.testbed.bed import HTTP_PORT, UPLINK_IP, WEB2_IP, WEB_IP, LightGuest


def cli(daemon, *args: str, timeout: float = 90) -> tuple[int, str, str]:
    res = sh.run(sh.PYTHON, "-m", "netagent", *args, "--config", str(daemon.config), check=False, timeout=timeout)
    return res.returncode, res.stdout, res.stderr


def cli_json(daemon, *args: str) -> Any:
    code, out, err = cli(daemon, *args, "--json")
    assert code == 0, f"{args}: exit {code}\n{out}\n{err}"
    return json.loads(out)


def network(daemon, sandbox: str) -> SimpleNamespace:
    """The fields LightGuest.attach reads, from `show --json`."""
    net = cli_json(daemon, "show", sandbox)["network"]
    return SimpleNamespace(netns=net["netns"], tap=net["tap"], guest_ip=net["guestIp"],
                           guest_prefixlen=net["guestPrefixlen"], gateway_ip=net["gatewayIp"],
                           guest_mac=net["guestMac"], host_veth=net["hostVeth"], sandbox_ip=net["sandboxIp"])


class Sniffer:
    """Every frame on one interface of a test netns, on a thread."""

    def __init__(self, netns: str, ifname: str):
        import scapy.layers.inet  # noqa: F401 - registers Ether/IP for decoding
        from scapy.arch.linux import L2ListenSocket
        self.sock = in_netns(f"/run/netns/{netns}", lambda: L2ListenSocket(iface=ifname))
        self.packets: list[Any] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from scapy.sendrecv import sniff
        sniff(opened_socket=self.sock, prn=self.packets.append, store=False,
              stop_filter=lambda _: self.stopped.is_set(), timeout=300)

    def stop(self) -> list[Any]:
        self.stopped.set()
        self.thread.join(5)
        self.sock.close()
        return self.packets


def trace(daemon, *args: str) -> dict[str, Any]:
    return cli_json(daemon, "trace", *args)


def test_trace_verdicts_and_no_packet_leaves_the_uplink(bed, daemon):
    for args in (["web-1"], ["deny-1", "--deny", WEB2_IP], ["off-1", "--internet", "off"]):
        assert cli(daemon, "allocate", *args)[0] == 0
    host_port = cli_json(daemon, "expose", "web-1", "3000")["hostPort"]
    web = network(daemon, "web-1")

    wan = Sniffer(bed.inet, "wan0")
    try:
        allowed = trace(daemon, "web-1", "--to", f"{WEB_IP}:{HTTP_PORT}")
        metadata = trace(daemon, "web-1", "--to", "169.254.169.254:80")
        denied = trace(daemon, "deny-1", "--to", f"{WEB2_IP}:{HTTP_PORT}")
        offline = trace(daemon, "off-1", "--to", WEB_IP, "--proto", "icmp")
        udp = trace(daemon, "web-1", "--to", f"{WEB_IP}:53", "--proto", "udp")
        ingress = trace(daemon, "--from-internet", str(host_port))
        closed = trace(daemon, "--from-internet", "29999")
        code, human, _ = cli(daemon, "trace", "web-1", "--to", "169.254.169.254:80")
        time.sleep(0.5)  # anything that did leave would be on the wire by now
    finally:
        seen = wan.stop()

    assert allowed["verdict"] == "accepted", allowed
    assert allowed["words"] == f"accepted: internet on, masqueraded via up0 (as {UPLINK_IP})"
    assert metadata["words"] == "dropped: always-deny 169.254.0.0/16", metadata
    assert denied["words"] == f"dropped: policy deny_out {WEB2_IP}", denied
    assert offline["words"] == "dropped: internet off", offline
    assert udp["verdict"] == "accepted" and udp["outInterface"] == "up0", udp
    assert ingress["words"] == (f"accepted: DNAT to sandbox web-1 guest port 3000 "
                                f"({web.sandbox_ip}, guest {web.guest_ip}) via {web.host_veth}"), ingress
    assert closed["verdict"] == "to-host" and "no exposed port on tcp/29999" in closed["words"], closed
    assert code == 0 and "from_sandbox" in human and "verdict: dropped: always-deny 169.254.0.0/16" in human

    # Not one trace packet reached the internet side of the uplink.
    probes = [t["probe"] for t in (allowed, metadata, denied, offline, udp, ingress, closed)]
    ids = {p["ip_id"] for p in probes}
    leaked = [p.summary() for p in seen if p.haslayer("IP") and p["IP"].id in ids]
    assert not leaked, leaked
    # ... while the sniffer does see real traffic (control).
    wan = Sniffer(bed.inet, "wan0")
    try:
        guest = LightGuest.attach(bed, web, "w")
        ok, body = guest.fetch(f"http://{WEB_IP}:{HTTP_PORT}/")
        assert ok, body
    finally:
        seen = wan.stop()
    assert any(p.haslayer("TCP") and p["TCP"].dport == HTTP_PORT for p in seen)

    # Nothing of the traces stays behind.
    assert "_trace" not in sh.run("nft", "list", "tables", ns=bed.host).stdout
    assert not [n for n in sh.links(bed.host) if n.startswith((f"{bed.agent_prefix}x", f"{bed.agent_prefix}y"))]


def test_trace_words_from_kernel_lines():
    """The words, from lines `nft monitor` printed (no root needed)."""
    from netagent.operator.trace import explain as tracewords
    lines = [
        'trace id 1a inet na_trace_7 trace_on packet: iif "nav1" ip saddr 10.12.0.3 ip daddr 203.0.113.9',
        'trace id 1a inet na_trace_7 trace_on rule iifname "nav1" ip id 9 meta nftrace set 1 (verdict continue)',
        "trace id 1a inet na forward rule iifname @sbx_ifaces jump from_sandbox (verdict jump from_sandbox)",
        'trace id 1a inet na from_sandbox rule oifname @uplinks ip saddr . ip daddr . meta l4proto . th dport '
        '@allow_port accept (verdict accept)',
        "trace id 1a inet na postrouting rule iifname @sbx_ifaces oifname @uplinks masquerade (verdict accept)",
        'trace id 1a inet na_trace_7 stop_forwarded packet: iif "nav1" oif "up0" ip saddr 10.12.0.3',
        "trace id 1a inet na_trace_7 stop_forwarded rule ip id 9 drop (verdict drop)",
        'trace id 2b inet na forward rule ip daddr 1.2.3.4 counter packets 3 bytes 9 name "drop_smtp" drop '
        "(verdict drop)",
    ]
    facts = tracewords.Facts(table="na", trace_table="na_trace_7", daddr="203.0.113.9", proto="tcp", port=443,
                             allow_entry="203.0.113.0/24:443", uplink_addresses=["198.51.100.2"])
    traces = tracewords.parse(lines)
    assert set(traces) == {"1a", "2b"}
    out = tracewords.explain(tracewords.ours(traces, "na_trace_7"), facts)
    assert (out.verdict, out.out_interface) == ("accepted", "up0")
    assert out.words == "accepted: allow_out 203.0.113.0/24:443, masqueraded via up0 (as 198.51.100.2)"
    smtp = tracewords.explain(traces["2b"], facts)
    assert smtp.words == "dropped: SMTP (tcp/25) is never allowed"
    assert tracewords.explain([], facts).verdict == "unknown"


def test_trace_usage_errors(bed, daemon):
    assert cli(daemon, "allocate", "u-1")[0] == 0
    assert cli(daemon, "trace", "u-1")[0] == 2
    assert cli(daemon, "trace", "u-1", "--to", "not-an-ip")[0] == 2
    assert cli(daemon, "trace", "u-1", "--to", WEB_IP, "--proto", "tcp")[0] == 2
    assert cli(daemon, "trace", "nobody", "--to", WEB_IP)[0] == 3


def test_gc_removes_a_stale_trace_table(bed, daemon):
    pid = next(p for p in range(4_000_000, 3_000_000, -1) if not os.path.exists(f"/proc/{p}"))
    table, veth = f"{bed.agent_prefix}_trace_{pid}", f"{bed.agent_prefix}xdead"
    sh.run("nft", f'add table inet {table} {{ comment "netagent trace pid={pid} veth={veth}"; }}', ns=bed.host)
    sh.ip("link", "add", veth, "type", "veth", "peer", "name", f"{bed.agent_prefix}ydead", ns=bed.host)
    leaked = cli_json(daemon, "gc")["leaked"]
    assert {"kind": "nft table", "name": f"inet {table}"} in leaked and {"kind": "link", "name": veth} in leaked
    assert cli(daemon, "gc", "--apply")[0] == 0
    assert table not in sh.run("nft", "list", "tables", ns=bed.host).stdout
    assert veth not in sh.links(bed.host)


def fetch_loop(guest: LightGuest, url: str, seconds: float) -> subprocess.Popen[str]:
    """A guest that opens a new connection to url again and again, about 30 a
    second: well under the agent's new-connection rate limit (200/s), which
    would otherwise drop SYNs and leave gaps of a second or more."""
    script = (f"import time, urllib.request\nend = time.monotonic() + {seconds!r}\n"
              "while time.monotonic() < end:\n"
              f"    try: urllib.request.urlopen({url!r}, timeout=2).read()\n"
              "    except Exception: pass\n"
              "    time.sleep(0.03)\n")
    return sh.popen(sh.PYTHON, "-c", script, ns=guest.name)


def test_capture_to_pcap_and_json(bed, daemon, tmp_path):
    assert cli(daemon, "allocate", "cap-1")[0] == 0
    guest = LightGuest.attach(bed, network(daemon, "cap-1"), "c")
    pcap = tmp_path / "cap.pcap"
    url = f"http://{WEB_IP}:{HTTP_PORT}/"
    proc = sh.popen(sh.PYTHON, "-m", "netagent", "capture", "cap-1", "--count", "6", "-w", str(pcap),
                    "--timeout", "30", "--config", str(daemon.config))
    traffic = fetch_loop(guest, url, 30)
    try:
        out, err = proc.communicate(timeout=40)
    finally:
        traffic.kill()
        traffic.wait(5)
    assert proc.returncode == 0, err
    assert "6 packets on tap0 written to" in out

    from scapy.utils import rdpcap
    packets = rdpcap(str(pcap))
    assert len(packets) == 6
    syn = [p for p in packets if p.haslayer("TCP") and p["TCP"].dport == HTTP_PORT]
    assert syn and all(p["IP"].src == guest.guest_ip and p["IP"].dst == WEB_IP for p in syn)

    # --json on the host veth: the same flows after the slot's NAT.
    net = network(daemon, "cap-1")
    traffic = fetch_loop(guest, url, 30)
    try:
        result = cli_json(daemon, "capture", "cap-1", "--iface", "veth", "--count", "3", "--timeout", "30")
    finally:
        traffic.kill()
        traffic.wait(5)
    assert result["interface"] == net.host_veth and result["count"] == len(result["packets"]) == 3
    assert any(net.sandbox_ip in p["summary"] for p in result["packets"]), result


def test_top_and_ls_rates(bed, daemon):
    for name in ("busy-1", "idle-1"):
        assert cli(daemon, "allocate", name)[0] == 0
    guest = LightGuest.attach(bed, network(daemon, "busy-1"), "b")
    traffic = fetch_loop(guest, f"http://{WEB_IP}:{HTTP_PORT}/", 60)
    try:
        # Sample until the idle one is quiet (the first samples can still see
        # the slot being set up).
        deadline = time.monotonic() + 25
        while True:
            rows = {r["sandbox"]: r for r in cli_json(daemon, "top", "--once", "--interval", "1.5")}
            if rows["idle-1"]["rx_pps"] == 0 or time.monotonic() > deadline:
                break
        code, human, _ = cli(daemon, "top", "--once", "--interval", "0.5")
        listed = {s["sandboxId"]: s for s in cli_json(daemon, "ls", "--rates-interval", "0.5")}
        code_ls, ls_human, _ = cli(daemon, "ls")
    finally:
        traffic.kill()
        traffic.wait(5)

    busy, idle = rows["busy-1"], rows["idle-1"]
    assert busy["tx_pps"] > 0 and busy["rx_pps"] > 0 and busy["tx_bps"] > 0 and busy["rx_bps"] > 0, busy
    assert busy["new_conns_ps"] > 0, busy
    assert idle["tx_pps"] == idle["rx_pps"] == idle["new_conns_ps"] == 0, idle
    assert code == 0 and "NEW_CONN_S" in human and "busy-1" in human and "idle-1" in human
    assert listed["busy-1"]["rates"]["rx_bps"] > 0 and listed["idle-1"]["rates"]["tx_bps"] == 0
    assert code_ls == 0 and ls_human.splitlines()[0].split()[3:5] == ["RX", "TX"]
    assert "RX" not in cli(daemon, "ls", "--rates-interval", "0")[1].splitlines()[0]
    assert all("rates" not in s for s in cli_json(daemon, "ls"))   # --json samples no rates unless asked
