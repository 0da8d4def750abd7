"""A real Redis Cluster on loopback: six `redis-server --cluster-enabled yes`
(3 masters + 3 replicas) in a temp dir, joined with `redis-cli --cluster create`.
Each node listens on 127.0.0.1 only; its cluster bus is on port + 10000.
A missing redis-server or redis-cli is a failure, never a skip."""
from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis as syncredis

NODE_TIMEOUT_MS = 1000   # how long a master may be silent before its replica is promoted


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def pick_ports(count: int) -> list[int]:
    """Ports whose cluster bus port (+10000) is free too; random, so parallel runs rarely collide."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(20000, 29000)
        if port not in ports and _free(port) and _free(port + 10000):
            ports.append(port)
    return ports


def _exe(name: str) -> str:
    exe = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if exe is None:
        pytest.fail(f"{name} is not installed (apt-get install redis-server redis-tools)", pytrace=False)
    return exe


@dataclass
class ClusterNode:
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    def client(self) -> syncredis.Redis:
        return syncredis.Redis(host="127.0.0.1", port=self.port, decode_responses=True, socket_timeout=2)

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [_exe("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--save", "", "--appendonly", "no",
             "--repl-diskless-sync-delay", "0",
             "--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def answers(self) -> bool:
        try:
            with self.client() as c:
                return c.ping()
        except (syncredis.RedisError, OSError):
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class RedisCluster:
    def __init__(self, workdir: Path, masters: int = 3, replicas: int = 1) -> None:
        self.nodes = [ClusterNode(port, workdir / f"node-{port}")
                      for port in pick_ports(masters * (1 + replicas))]
        self.replicas = replicas

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start_nodes(self, timeout_s: float = 10.0) -> None:
        for node in self.nodes:
            node.start()
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            while not node.answers():
                if not node.alive or time.monotonic() > deadline:
                    self.stop()
                    log = (node.workdir / "redis.log").read_text(errors="replace")[-2000:]
                    pytest.fail(f"cluster node :{node.port} did not come up:\n{log}", pytrace=False)
                time.sleep(0.02)

    def create(self, timeout_s: float = 30.0) -> None:
        """Starts the nodes, assigns the slots and waits until every node says cluster_state:ok."""
        self.start_nodes()
        out = subprocess.run(
            [_exe("redis-cli"), "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True, text=True, timeout=timeout_s)
        if out.returncode != 0:
            self.stop()
            pytest.fail(f"redis-cli --cluster create failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
        self.wait_settled(timeout_s)

    def wait_settled(self, timeout_s: float = 30.0) -> float:
        """Until every live node says cluster_state:ok and sees the slots on 3 live masters.
        Returns the seconds it took."""
        start = time.monotonic()
        while not self.settled():
            if time.monotonic() - start > timeout_s:
                pytest.fail(f"cluster not settled within {timeout_s} s: {self.describe()}")
            time.sleep(0.05)
        return time.monotonic() - start

    def settled(self) -> bool:
        live = {n.port for n in self.nodes if n.alive}
        try:
            for node in self.nodes:
                if not node.alive:
                    continue
                with node.client() as c:
                    if c.cluster("info").get("cluster_state") != "ok":
                        return False
                    repl = c.info("replication")
                    if repl.get("role") == "slave" and repl.get("master_link_status") != "up":
                        return False   # a replica not yet in sync could not take over
                    masters = self._masters_seen_by(c)
                    if len(masters) != len(self.nodes) // (1 + self.replicas) or not masters <= live:
                        return False
            return True
        except (syncredis.RedisError, OSError):
            return False

    @staticmethod
    def _masters_seen_by(client: syncredis.Redis) -> set[int]:
        return {int(addr.split(":")[1]) for addr, info in client.cluster("nodes").items()
                if "master" in info["flags"] and "fail" not in info["flags"] and info["slots"]}

    def master_of(self, key: str) -> ClusterNode:
        """The live master that serves `key`'s slot now."""
        for node in self.nodes:
            if not node.alive:
                continue
            with node.client() as c:
                slot = c.cluster("keyslot", key)
                for addr, info in c.cluster("nodes").items():
                    if "master" in info["flags"] and "fail" not in info["flags"] and any(
                            int(lo) <= slot <= int(hi) for lo, hi in (s if len(s) == 2 else (s[0], s[0])
                                                                      for s in info["slots"])):
                        port = int(addr.split(":")[1])
                        return next(n for n in self.nodes if n.port == port)
        raise AssertionError(f"no live master serves {key!r}")

    def masters(self) -> list[ClusterNode]:
        node = next(n for n in self.nodes if n.alive)
        with node.client() as c:
            ports = self._masters_seen_by(c)
        return [n for n in self.nodes if n.port in ports and n.alive]

    def flush(self) -> None:
        for node in self.masters():
            with node.client() as c:
                c.flushall()

    def keys(self) -> list[str]:
        out: list[str] = []
        for node in self.masters():
            with node.client() as c:
                out += list(c.scan_iter(count=1000))
        return out

    @staticmethod
    def state_of(node: ClusterNode) -> str:
        with node.client() as c:
            return c.cluster("info").get("cluster_state", "?")

    def describe(self) -> str:
        parts = []
        for node in self.nodes:
            try:
                with node.client() as c:
                    parts.append(f":{node.port} {c.cluster('info').get('cluster_state')}")
            except (syncredis.RedisError, OSError) as exc:
                parts.append(f":{node.port} {type(exc).__name__}")
        return ", ".join(parts)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


def raw_set(registry_url: str, key: str, value: str, px: int) -> None:
    """SET a key behind the registry's back, on a unix:// Redis or a redis+cluster:// cluster
    (redis-py's sync cluster client finds the key's master)."""
    if registry_url.startswith("unix://"):
        with syncredis.Redis(unix_socket_path=registry_url[len("unix://"):]) as r:
            r.set(key, value, px=px)
        return
    host, port = registry_url.split("://", 1)[1].split(",")[0].rsplit(":", 1)
    with syncredis.RedisCluster(host=host, port=int(port)) as cluster:
        cluster.set(key, value, px=px)
