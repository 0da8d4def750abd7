"""Baselines for netagent benchmarks: per-sandbox network slots built "the way
others do it" (E2B-v1-style shell commands, and CNI bridge+portmap).

Every object is created inside network namespaces: a caller-provided "host"
netns plus one netns per sandbox. The root namespace is never modified.
Run standalone (as root) to print setup/teardown latency percentiles as JSON.
"""
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager

CNI_PATH = "/usr/lib/cni"
CNI_VERSION = "1.0.0"
GUEST_IP = "169.254.0.21"   # address of the guest behind tap0
TAP_CIDR = "169.254.0.22/30"
MAX_SLOTS = 32767           # keeps /31 pairs inside 10.12.0.0/16 and ports <= 65535


class CommandError(RuntimeError):
    def __init__(self, cmd, rc, stdout, stderr):
        self.cmd, self.rc, self.stdout, self.stderr = cmd, rc, stdout, stderr
        detail = (stderr or stdout).strip()  # CNI plugins report errors on stdout
        super().__init__(f"{shlex.join(cmd)} -> rc={rc}: {detail}")


def run(cmd, *, input=None, env=None, check=True) -> str:
    p = subprocess.run(cmd, input=input, env=env, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise CommandError(cmd, p.returncode, p.stdout, p.stderr)
    return p.stdout


def nsx(netns, *cmd):
    """Command line running `cmd` inside `netns`."""
    return ["ip", "netns", "exec", netns, *cmd]


def netns_names():
    return [line.split()[0] for line in run(["ip", "netns", "list"]).splitlines() if line.strip()]


def link_names(netns=None):
    """Link names in `netns` (None: current netns, read-only)."""
    out = run(["ip", *(["-n", netns] if netns else []), "-o", "link", "show"])
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


def ifname(name):
    if len(name.encode()) > 15:
        raise ValueError(f"interface name too long: {name}")
    return name


class Baseline:
    name = "base"

    def __init__(self, host_netns: str, prefix: str):
        if not re.fullmatch(r"[a-z][a-z0-9]{0,5}", prefix):
            raise ValueError("prefix must be 1-6 chars [a-z0-9], starting with a letter")
        self.host, self.prefix = host_netns, prefix
        self.live = set()  # slots set up (even partially) and not torn down

    def netns(self, i):
        if not 0 <= i < MAX_SLOTS:
            raise ValueError(f"slot index out of range: {i}")
        return f"{self.prefix}-{i}"

    def prepare(self) -> None:
        run(["ip", "-n", self.host, "link", "set", "lo", "up"])
        run(nsx(self.host, "sysctl", "-qw", "net.ipv4.ip_forward=1"))

    def setup_one(self, i: int) -> None:
        raise NotImplementedError

    def teardown_one(self, i: int) -> None:
        self._teardown(i, strict=True)
        self.live.discard(i)

    def _teardown(self, i, strict):
        raise NotImplementedError

    def cleanup(self) -> None:
        """Best effort: remove everything this baseline created."""
        for i in sorted(self.live):
            self._teardown(i, strict=False)
        self.live.clear()
        for ns in netns_names():
            if re.fullmatch(rf"{self.prefix}-\d+", ns):
                run(["ip", "netns", "del", ns], check=False)
        for link in link_names(self.host):
            if link.startswith(self.prefix + "-"):
                run(["ip", "-n", self.host, "link", "del", link], check=False)


class ShellBaseline(Baseline):
    """E2B v1 style: one `ip`/`iptables` subprocess per step."""
    name = "shell"

    def _names(self, i):
        return self.netns(i), ifname(f"{self.prefix}-h{i}"), ifname(f"{self.prefix}-n{i}")

    def _addrs(self, i):
        self.netns(i)  # range check
        h, s = 2 * i, i + 1
        return (f"10.12.{h >> 8}.{h & 255}", f"10.12.{h >> 8}.{(h & 255) + 1}",
                f"10.11.{s >> 8}.{s & 255}")  # host veth, ns veth, sandbox IP

    def _ns_rules(self, i):
        _, _, peer = self._names(i)
        sbx = self._addrs(i)[2]
        return [("nat", "POSTROUTING", ["-o", peer, "-s", GUEST_IP, "-j", "SNAT", "--to", sbx]),
                ("nat", "PREROUTING", ["-i", peer, "-d", sbx, "-j", "DNAT", "--to", GUEST_IP])]

    def _host_rules(self, i):
        _, hv, _ = self._names(i)
        sbx = self._addrs(i)[2]
        return [("filter", "FORWARD", ["-i", hv, "-j", "ACCEPT"]),
                ("filter", "FORWARD", ["-o", hv, "-j", "ACCEPT"]),
                ("nat", "POSTROUTING", ["-s", f"{sbx}/32", "-j", "MASQUERADE"]),
                ("nat", "PREROUTING", ["-p", "tcp", "--dport", str(30000 + i),
                                       "-j", "DNAT", "--to-destination", f"{sbx}:8080"])]

    def setup_one(self, i: int) -> None:
        ns, hv, pv = self._names(i)
        host_ip, peer_ip, sbx = self._addrs(i)
        H, N = ["ip", "-n", self.host], ["ip", "-n", ns]
        self.live.add(i)
        for cmd in [
            ["ip", "netns", "add", ns],
            H + ["link", "add", hv, "type", "veth", "peer", "name", pv],
            H + ["link", "set", pv, "netns", ns],
            nsx(ns, "ip", "tuntap", "add", "tap0", "mode", "tap"),
            H + ["addr", "add", f"{host_ip}/31", "dev", hv],
            N + ["addr", "add", f"{peer_ip}/31", "dev", pv],
            N + ["addr", "add", TAP_CIDR, "dev", "tap0"],
            H + ["link", "set", hv, "up"],
            N + ["link", "set", pv, "up"],
            N + ["link", "set", "tap0", "up"],
            N + ["link", "set", "lo", "up"],
            N + ["route", "add", "default", "via", host_ip],
            H + ["route", "add", f"{sbx}/32", "via", peer_ip, "dev", hv],
            nsx(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"),
            *[nsx(ns, "iptables", "-t", t, "-A", c, *s) for t, c, s in self._ns_rules(i)],
            *[nsx(self.host, "iptables", "-t", t, "-A", c, *s) for t, c, s in self._host_rules(i)],
        ]:
            run(cmd)

    def _teardown(self, i, strict):
        ns, hv, _ = self._names(i)
        for t, c, s in self._host_rules(i):
            run(nsx(self.host, "iptables", "-t", t, "-D", c, *s), check=strict)
        run(["ip", "-n", self.host, "link", "del", hv], check=strict)  # also kills the peer
        run(["ip", "netns", "del", ns], check=strict)


class CniBaseline(Baseline):
    """CNI conflist {bridge, portmap} chained by hand, as libcni does."""
    name = "cni"

    def __init__(self, host_netns: str, prefix: str):
        super().__init__(host_netns, prefix)
        self.network = f"{prefix}-net"
        self.bridge = ifname(f"{prefix}-br")
        self.datadir = None
        self.results = {}  # slot -> cached ADD result (prevResult for DEL)

    def prepare(self) -> None:
        super().prepare()
        self.datadir = tempfile.mkdtemp(prefix=f"{self.prefix}-ipam-")

    def _plugins(self):
        return [
            {"type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/16"}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": self.datadir}},
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        ]

    def _invoke(self, plugin, command, i, prev, check=True):
        conf = {"cniVersion": CNI_VERSION, "name": self.network, **plugin}
        runtime = {"portMappings": [{"hostPort": 30000 + i, "containerPort": 8080,
                                     "protocol": "tcp"}]}
        rc = {k: v for k, v in runtime.items() if plugin.get("capabilities", {}).get(k)}
        if rc:
            conf["runtimeConfig"] = rc
        if prev is not None:
            conf["prevResult"] = prev
        env = dict(os.environ, CNI_COMMAND=command, CNI_CONTAINERID=f"{self.prefix}-{i}",
                   CNI_NETNS=f"/run/netns/{self.netns(i)}", CNI_IFNAME="eth0",
                   CNI_PATH=CNI_PATH)
        out = run(nsx(self.host, f"{CNI_PATH}/{plugin['type']}"),
                  input=json.dumps(conf), env=env, check=check)
        return json.loads(out) if command == "ADD" else None

    def setup_one(self, i: int) -> None:
        ns = self.netns(i)
        self.live.add(i)
        run(["ip", "netns", "add", ns])
        prev = None
        for plugin in self._plugins():
            prev = self._invoke(plugin, "ADD", i, prev)
        self.results[i] = prev
        run(nsx(ns, "ip", "tuntap", "add", "tap0", "mode", "tap"))

    def _teardown(self, i, strict):
        prev = self.results.pop(i, None)
        for plugin in reversed(self._plugins()):
            self._invoke(plugin, "DEL", i, prev, check=strict)
        run(["ip", "netns", "del", self.netns(i)], check=strict)

    def cleanup(self) -> None:
        try:
            super().cleanup()
            self._drop_cni_chains()
        finally:
            if self.datadir:
                shutil.rmtree(self.datadir, ignore_errors=True)
                self.datadir = None

    def _drop_cni_chains(self):
        # Plugins leave shared CNI-* chains behind; the host netns is assumed
        # to be dedicated to the benchmark, so remove all of them.
        def ipt(*a):
            return run(nsx(self.host, "iptables", *a), check=False)
        for table in ("nat", "filter", "mangle"):
            save = run(nsx(self.host, "iptables-save", "-t", table), check=False)
            chains = re.findall(r"^:(CNI-\S+)", save, re.M)
            for line in save.splitlines():
                parts = shlex.split(line) if line.startswith("-A ") else []
                if parts and not parts[1].startswith("CNI-") and "-j" in parts \
                        and parts[parts.index("-j") + 1].startswith("CNI-"):
                    ipt("-t", table, "-D", *parts[1:])
            for c in chains:
                ipt("-t", table, "-F", c)
            for c in chains:
                ipt("-t", table, "-X", c)


BASELINES = {"shell": ShellBaseline, "cni": CniBaseline}


@contextmanager
def host_netns(name):
    """A throwaway netns acting as the benchmark's host."""
    run(["ip", "netns", "add", name])
    try:
        yield name
    finally:
        run(["ip", "netns", "del", name], check=False)


def percentile(xs, p):
    xs = sorted(xs)
    return xs[max(0, math.ceil(p / 100 * len(xs)) - 1)]


def measure(cls, host, prefix, points, samples):
    """Fill to each N in `points`, then time `samples` setup/teardown cycles
    of one extra slot while N slots exist."""
    b, res, n = cls(host, prefix), {}, 0
    try:
        b.prepare()
        for N in points:
            while n < N:
                b.setup_one(n)
                n += 1
            su, td = [], []
            for k in range(samples):
                j = 20000 + k  # far from the filled indices
                t0 = time.perf_counter()
                b.setup_one(j)
                t1 = time.perf_counter()
                b.teardown_one(j)
                t2 = time.perf_counter()
                su.append((t1 - t0) * 1e3)
                td.append((t2 - t1) * 1e3)
            res[f"N={N}"] = {
                kind: {"p50": round(percentile(xs, 50), 2), "p99": round(percentile(xs, 99), 2)}
                for kind, xs in (("setup_ms", su), ("teardown_ms", td))}
    finally:
        b.cleanup()
    return res


def main():
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", default="10,200", help="comma-separated N values")
    ap.add_argument("--samples", type=int, default=50, help="timed cycles per N")
    ap.add_argument("--only", default=",".join(BASELINES), help="baselines to run")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("must run as root")
    points = [int(x) for x in a.points.split(",")]
    tag = os.urandom(2).hex()
    out = {"samples": a.samples, "kernel": os.uname().release, "results": {}}
    for name in a.only.split(","):
        with host_netns(f"blh{name}{tag}") as host:
            out["results"][name] = measure(BASELINES[name], host, f"b{name[0]}{tag}",
                                           points, a.samples)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
