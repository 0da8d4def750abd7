"""`netagent teardown`: remove everything the agent made on this host — every
slot (netns and host veth), the host table, and the state store — after the
agent has stopped. A restart keeps all of it on purpose (sandboxes keep their
traffic); this is for taking a host out of service."""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from ..config import Config
from ..firewall import ruleset
from ..firewall.nft import connect
from . import hostcheck
from .kernel import in_netns

STATE_FILES = ("state.db", "state.db-wal", "state.db-shm")


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
    files = [p for name in STATE_FILES if (p := Path(config.state_dir) / name).exists()]
    for p in files:
        p.unlink()
    return {"allocations": held, "netns": sum(o["kind"] == "netns" for o in objects),
            "links": sum(o["kind"] == "link" for o in objects), "table": bool(table),
            "state_files": [str(p) for p in files]}
