"""The operator commands' arguments. Only argparse here: `netagent --help` and
the parsing of every command import nothing else (the commands themselves
live in commands.py, imported once one is chosen)."""
from __future__ import annotations

import argparse

# Commands that need only the agent's socket, prefix and netns: they run on
# quick.ClientSettings, without validating the whole config (no pydantic).
LIGHT = frozenset({"status", "ls"})


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    def cmd(name: str, help: str, fn: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--config", help="the agent's TOML config (for the socket, prefix and host netns)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(run=fn)
        return p

    cmd("status", "host summary", "status")
    p = cmd("ls", "one row per sandbox", "ls")
    p.add_argument("--label", action="append", default=[], metavar="K=V")
    p.add_argument("--state", default="")
    p.add_argument("--rates-interval", type=float, default=None, metavar="S",
                   help="sample rx/tx rates over S seconds (0: no rate columns; default 0.5, and 0 with --json)")
    p = cmd("show", "everything about one sandbox, with drift against the kernel and the registry", "show")
    p.add_argument("sandbox")
    p = cmd("probe", "is a guest TCP port open right now (a half-open SYN probe from the host)", "probe")
    p.add_argument("sandbox")
    p.add_argument("port", type=int)
    p.add_argument("--timeout-ms", type=int, metavar="N", help="wait N ms for an answer (default: the agent's "
                   "probe_timeout_s)")
    p = cmd("allocate", "allocate a sandbox network", "allocate")
    p.add_argument("sandbox")
    _policy_args(p)
    p.add_argument("--label", action="append", default=[], metavar="K=V")
    p = cmd("release", "release a sandbox network", "release")
    p.add_argument("sandbox")
    p = cmd("expose", "map a guest port to a host port", "expose")
    p.add_argument("sandbox")
    p.add_argument("port", type=int)
    p.add_argument("--proto", default="tcp", choices=["tcp", "udp"])
    p.add_argument("--host-port", type=int, default=0)
    p = cmd("unexpose", "remove a port mapping", "unexpose")
    p.add_argument("sandbox")
    p.add_argument("port", type=int)
    p.add_argument("--proto", default="tcp", choices=["tcp", "udp"])
    p = cmd("gc", "find objects with our prefix that no slot owns; remove them with --apply", "gc")
    p.add_argument("--apply", action="store_true")
    cmd("resync", "repair drift: re-add every nft element from state (reload the table if edited), "
                  "rewrite every registry record", "resync")
    p = cmd("teardown", "remove every slot, the host table, the state, the records and the interceptor "
            "(stop the agent first)", "teardown")
    p.add_argument("--force", action="store_true", help="even while sandboxes are allocated")
    cmd("doctor", "check the host's prerequisites and the registry, and explain each failure", "doctor")
    p = cmd("policy", "show or replace a sandbox's egress policy", "policy")
    p.add_argument("action", choices=["show", "set"])
    p.add_argument("sandbox")
    _policy_args(p)
    p = cmd("rules", "show or replace a sandbox's request rules (JSON list from FILE or -)", "rules")
    p.add_argument("action", choices=["show", "set"])
    p.add_argument("sandbox")
    p.add_argument("file", nargs="?", default="-")
    p = cmd("secrets", "list, set (value on stdin) or delete a sandbox's secrets; values are never shown", "secrets")
    p.add_argument("action", choices=["list", "set", "delete"])
    p.add_argument("sandbox")
    p.add_argument("name", nargs="?", default="")
    cmd("intercept-ca", "print the host interception CA (PEM) to install in guests", "intercept_ca")
    p = cmd("trace", "what the host's rules do to one packet from a sandbox (or from the internet)", "trace")
    p.add_argument("sandbox", nargs="?")
    p.add_argument("--to", metavar="ADDR[:PORT]")
    p.add_argument("--from-internet", type=int, metavar="HOST_PORT")
    p.add_argument("--proto", choices=["tcp", "udp", "icmp"])
    p = cmd("capture", "capture a sandbox's packets (pcap or one line per packet)", "capture")
    p.add_argument("sandbox")
    p.add_argument("-w", dest="write", metavar="FILE.pcap")
    p.add_argument("--count", type=int, default=0, help="stop after N packets (0: until Ctrl-C or --timeout)")
    p.add_argument("--filter", metavar="BPF")
    p.add_argument("--timeout", type=float, metavar="S")
    p.add_argument("--iface", choices=["tap", "veth"], default="tap")
    p = cmd("top", "live per-sandbox packets/s, bytes/s and new connections/s", "top")
    p.add_argument("--interval", type=float, default=1.0, metavar="S")
    p.add_argument("--once", action="store_true", help="one sample, then exit")
    p.add_argument("--count", type=int, metavar="N", help="N samples, then exit")
    p = cmd("flows", "a sandbox's connections that ended, oldest first (from the agent's flow record)", "flows")
    p.add_argument("sandbox")
    p.add_argument("--since", metavar="TIME",
                   help="ended at or after TIME: unix seconds, ISO-8601, or ago (10m, 2h, 1d)")
    p.add_argument("--until", metavar="TIME", help="ended at or before TIME (same forms; default now)")
    p.add_argument("--limit", type=int, default=100, metavar="N",
                   help="at most N records (default 100, max 10000)")


def _policy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--internet", choices=["on", "off"])
    p.add_argument("--allow", action="append", default=[], metavar="ENTRY")
    p.add_argument("--deny", action="append", default=[], metavar="ENTRY")
