"""`netagent teardown`: remove everything the agent made on this host — every
slot (netns and host veth), the host table, the state store, the flow and
request records, and the interceptor (a HAProxy left running, its files, the
host CA and sealed secrets) — after the agent has stopped. A restart keeps all
of it on purpose (sandboxes keep their traffic, records resume); this is for
taking a host out of service. The registry is not touched (its node record
expires)."""
from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

from ..config import Config
from ..firewall import ruleset
from ..firewall.nft import connect
from . import hostcheck
from .kernel import in_netns

STATE_FILES = ("state.db", "state.db-wal", "state.db-shm", "flows.db", "flows.db-wal", "flows.db-shm")
STOP_WAIT_S = 10.0


class Refused(Exception):
    pass


def allocations(config: Config) -> int:
    db = Path(config.state_dir) / "state.db"
    if not db.exists():
        return 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM allocations").fetchone()[0])


def teardown(config: Config, force: bool) -> dict[str, Any]:
    """Remove it all; Refused (nothing removed) while allocations exist, unless forced."""
    held = allocations(config)
    if held and not force:
        raise Refused(f"{held} sandbox(es) are still allocated in {config.state_dir}; their guests would lose "
                      "the network. Release them first, or run again with --force.")
    objects = hostcheck.ours(config)
    hostcheck.remove(config, objects)
    table = in_netns(config.host_netns, lambda: connect().delete_table(config.prefix))
    in_netns(config.host_netns, lambda: connect().delete_table(ruleset.first_payload_table(config), "ip"))
    interceptor = stop_interceptor(config)
    files = [p for p in record_files(config) if p.exists()]
    for p in files:
        p.unlink()
    dirs = [d for d in intercept_dirs(config) if d.exists()]
    for d in dirs:
        shutil.rmtree(d)
    keys = Path(config.state_dir) / "keys"
    if keys.is_dir() and not any(keys.iterdir()):
        keys.rmdir()
    return {"allocations": held, "netns": sum(o["kind"] == "netns" for o in objects),
            "links": sum(o["kind"] == "link" for o in objects), "table": bool(table),
            "state_files": [str(p) for p in files], "dirs": [str(d) for d in dirs], "interceptor": interceptor}


def record_files(config: Config) -> list[Path]:
    """state.db, flows.db (with their WAL), the JSON-lines logs, the secrets' host key."""
    state = Path(config.state_dir)
    flow_log = config.flow_log_path()
    request_log = config.intercept.request_log or state / "requests.jsonl"
    return [*(state / name for name in STATE_FILES), flow_log, flow_log.with_name(flow_log.name + ".1"),
            request_log, state / "keys" / "secrets.key"]


def intercept_dirs(config: Config) -> list[Path]:
    """The interceptor's state (CA, certificates, rules, sealed secrets, unread request records) and run dir."""
    return [Path(config.state_dir) / "intercept", Path(config.intercept.run_dir)]


def stop_interceptor(config: Config) -> int | None:
    """Stop a HAProxy an agent killed -9 left running (pid file in the run dir,
    checked to be haproxy on this agent's config); its pid, or None."""
    run_dir = Path(config.intercept.run_dir)
    try:
        pid = int((run_dir / "haproxy.pid").read_text())
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except (OSError, ValueError):
        return None
    if str(run_dir / "haproxy.cfg").encode() not in cmdline:
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if running(pid):
        os.kill(pid, signal.SIGKILL)
    return pid


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit is reaped by init, maybe later)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
