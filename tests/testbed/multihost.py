"""The multi-host test bed: three hosts, each a netns with its own agent process,
on one "datacenter" bridge; a router to the internet netns; the HAProxy edge in its
own netns, programmed by a `netagent edge` process; a Redis Cluster as the registry.

  [host A {p}ha] up0 198.51.100.2  ─┐
  [host B {p}hb] up0 198.51.100.3  ─┤  [dc {p}d]   ┌ [router {p}r] dc0 198.51.100.1
  [host C {p}hc] up0 198.51.100.4  ─┼── br0 ───────┘               wan0 198.18.0.1/30 ── [internet {p}i]
  [edge   {p}e]  dc0 198.51.100.10 ─┘                                   wan0 198.18.0.2/30, servers on lo

The Redis Cluster listens on the root namespace's loopback: an agent (and the edge
control plane) makes its registry connections on its event loop thread, which stays in
the root netns (`host_netns` is entered only by the datapath's own threads).
Clients fetch `http://198.51.100.10:8080/` from the internet netns with the Host
`{port}-{sandbox}.{DOMAIN}`, through the router, as a user would.
"""
from __future__ import annotations

import contextlib
import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from netagent.config import Config

from . import sh
from .agent_proc import AgentProcess
from .bed import CLIENT_IP, DNS_IP, WEB_IP, LightGuest, unique_prefix
from .haproxy_proc import HAProxy
from .redis_cluster import RedisCluster

DOMAIN = "sbx.multihost.test"
ROUTER_IP = "198.51.100.1"
HOST_IPS = {"a": "198.51.100.2", "b": "198.51.100.3", "c": "198.51.100.4"}
EDGE_IP = "198.51.100.10"
EDGE_PORT = 8080
WAN_ROUTER, WAN_INET = "198.18.0.1", "198.18.0.2"


@dataclass
class MultiHostBed:
    workdir: Path
    ttl_s: float = 5.0
    heartbeat_s: float = 1.0
    prefix: str = field(default_factory=unique_prefix)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)   # servers, relays (LightGuest)
    agents: dict[str, AgentProcess] = field(default_factory=dict)
    cluster: RedisCluster | None = None
    haproxy: HAProxy | None = None
    edge: subprocess.Popen[str] | None = None

    def ns(self, role: str) -> str:
        return f"{self.prefix}{role}"

    def host_ns(self, name: str) -> str:
        return self.ns(f"h{name}")

    def create(self) -> MultiHostBed:
        try:
            self._network()
            self.cluster = RedisCluster(self.workdir / "redis")
            self.cluster.create()
            for name in HOST_IPS:
                self.start_agent(name)
            self._edge()
        except BaseException:
            self.destroy()
            raise
        return self

    def _network(self) -> None:
        dc, router, inet, edge = self.ns("d"), self.ns("r"), self.ns("i"), self.ns("e")
        for ns in (dc, router, inet, edge, *map(self.host_ns, HOST_IPS)):
            sh.ip("netns", "add", ns)
            sh.ip("link", "set", "lo", "up", ns=ns)
        sh.ip("link", "add", "br0", "type", "bridge", ns=dc)
        sh.ip("link", "set", "br0", "up", ns=dc)
        ports = {**{self.host_ns(n): ("up0", f"p{n}", ip) for n, ip in HOST_IPS.items()},
                 edge: ("dc0", "pe", EDGE_IP), router: ("dc0", "pr", ROUTER_IP)}
        for ns, (inside, on_bridge, address) in ports.items():
            sh.ip("link", "add", inside, "netns", ns, "type", "veth", "peer", "name", on_bridge, "netns", dc)
            sh.ip("link", "set", on_bridge, "master", "br0", "up", ns=dc)
            sh.ip("addr", "add", f"{address}/24", "dev", inside, ns=ns)
            sh.ip("link", "set", inside, "up", ns=ns)
            if ns != router:
                sh.ip("route", "add", "default", "via", ROUTER_IP, ns=ns)
        sh.ip("link", "add", "wan0", "netns", router, "type", "veth", "peer", "name", "wan0", "netns", inet)
        for ns, address in ((router, WAN_ROUTER), (inet, WAN_INET)):
            sh.ip("addr", "add", f"{address}/30", "dev", "wan0", ns=ns)
            sh.ip("link", "set", "wan0", "up", ns=ns)
        sh.ip("route", "add", "default", "via", WAN_INET, ns=router)
        sh.ip("route", "add", "198.51.100.0/24", "via", WAN_ROUTER, ns=inet)
        sh.run("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=router)   # the router netns's own sysctl
        for address in (WEB_IP, CLIENT_IP, DNS_IP):
            sh.ip("addr", "add", f"{address}/32", "dev", "lo", ns=inet)

    def agent_config(self, name: str) -> Config:
        return Config.model_validate({
            "prefix": f"{self.prefix}{name}", "host_netns": self.host_ns(name), "uplink": "up0",
            "state_dir": str(self.workdir / f"state-{name}"), "node_id": f"host-{name}",
            "pool": {"size": 1}, "dns_upstreams": [DNS_IP], "ruleset_check_interval_s": 0.5,
            "registry": {"url": self.cluster.url, "ttl_s": self.ttl_s, "heartbeat_s": self.heartbeat_s}})

    def start_agent(self, name: str) -> AgentProcess:
        self.agents[name] = AgentProcess(self.agent_config(name).model_dump_json())
        return self.agents[name]

    def _edge(self) -> None:
        self.haproxy = HAProxy.for_test(self.workdir / "edge", DOMAIN, http_listen=(f"0.0.0.0:{EDGE_PORT}",))
        self.haproxy.start(netns=self.ns("e"))
        s = self.haproxy.settings
        with open(self.workdir / "edge.log", "w") as log:   # the child keeps its own descriptor
            self.edge = subprocess.Popen(
                [sh.PYTHON, "-m", "netagent", "edge", "--domain", DOMAIN, "--map-dir", s.map_dir, "--shards",
                 str(s.shards), "--haproxy-socket", s.admin_socket, "--registry", self.cluster.url],
                stdout=log, stderr=subprocess.STDOUT, text=True, cwd=sh.REPO)

    def serve(self, host: str, sandbox_id: str, guest_port: int, label: str) -> LightGuest:
        """Allocate on `host`, attach a light guest serving HTTP that names itself `label`, expose it."""
        net = SimpleNamespace(**self.agents[host].call("allocate", sandbox_id=sandbox_id))
        guest = LightGuest.attach(self, net, f"{host}{len(self.procs)}")  # type: ignore[arg-type]
        self.start_server(guest.name, "--http", str(guest_port), "--name", label)
        self.agents[host].call("expose", sandbox_id=sandbox_id, guest_port=guest_port)
        return guest

    def start_server(self, ns: str, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sh.PYTHON, "-m", "tests.testbed.servers", *args],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=sh.REPO)
        self.procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    def get(self, sandbox_id: str, port: int, timeout: float = 2.0) -> tuple[int, str]:
        """(HTTP status, the serving guest's label or "") of a GET through the edge, from the internet."""
        res = sh.run(sh.PYTHON, "-m", "tests.testbed.http_get", f"{EDGE_IP}:{EDGE_PORT}", "/", "--host",
                     f"{port}-{sandbox_id}.{DOMAIN}", "--timeout", str(timeout), ns=self.ns("i"),
                     timeout=timeout + 10)
        out = json.loads(res.stdout)
        label = ""
        if out["status"] == 200 and out["body"].startswith("{"):
            label = json.loads(out["body"]).get("name", "")
        return out["status"], label

    def wait_for(self, sandbox_id: str, port: int, want: tuple[int, str], timeout: float = 15.0) -> float:
        start = time.monotonic()
        while (got := self.get(sandbox_id, port)) != want:
            assert time.monotonic() - start < timeout, f"{sandbox_id}: {got}, not {want} within {timeout} s"
            time.sleep(0.05)
        return time.monotonic() - start

    def fetch(self, ns: str, url: str, timeout: float = 3.0) -> tuple[bool, str]:
        res = sh.run(sh.PYTHON, "-m", "tests.testbed.client", url, "--timeout", str(timeout), ns=ns, check=False,
                     timeout=timeout + 10)
        return res.returncode == 0, res.stdout.strip()

    def destroy(self) -> None:
        if self.edge is not None and self.edge.poll() is None:
            self.edge.kill()
            self.edge.wait(10)
        if self.haproxy is not None:
            self.haproxy.stop()
        for agent in self.agents.values():
            if agent.proc.poll() is None:
                agent.proc.kill()
                agent.proc.wait(10)
        for proc in self.procs:
            with contextlib.suppress(Exception):
                proc.kill()
                proc.wait(5)
        if self.cluster is not None:
            self.cluster.stop()
        for ns in sh.netns_list():
            if ns.startswith(self.prefix):
                sh.ip("netns", "del", ns, check=False)
