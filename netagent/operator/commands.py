"""The operator commands. Each returns an exit code: 0 ok, 1 failure,
2 usage, 3 not found."""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..api import netagent_pb2 as pb
from . import probe_outcome, proto_dict, usage_view
from .ages import ago, from_ms
from .quick import ClientSettings

if TYPE_CHECKING:
    from ..client import Client
    from ..config import Config
    from . import registrycheck
# hostcheck (pyroute2), registrycheck (registry clients), agent_facts (the
# validated Config) and kernel (libnftables) are imported by the commands that
# use them: status and ls stay light (tests/unit/test_cli_light.py).
from .intercept_cmds import intercept_ca, rules, secrets  # noqa: E402,F401 - dispatched by name (cli.py)
from .render import EXIT_FAILURE, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, emit, fail, pairs, table


def to_dict(msg: Any) -> dict[str, Any]:
    """As MessageToDict prints it; by hand for the messages ls/status/show print."""
    convert = proto_dict.CONVERTERS.get(type(msg))
    if convert is not None:
        return convert(msg)
    from google.protobuf.json_format import MessageToDict  # ~60 ms of imports
    return MessageToDict(msg, always_print_fields_with_no_presence=True)


# Their calls go through lightrpc (no grpcio import, ~80 ms less start-up);
# NA_CLI_CLIENT=grpcio sends them through grpcio like the rest (not NETAGENT_*:
# those are config keys, and the validated config refuses unknown ones).
LIGHT_CLIENT = frozenset({"status", "ls", "show"})


def guarded(fn: Callable[[argparse.Namespace, Any, Client], int], args: argparse.Namespace,
            config: Config | ClientSettings) -> int:
    """Run a command; turn gRPC failures into plain messages and exit codes. A
    light command gets ClientSettings, the others the validated Config."""
    socket_path = config.socket if isinstance(config, ClientSettings) else str(config.api.socket)
    with _client(fn.__name__, socket_path) as client:
        try:
            return fn(args, _effective(config, client), client)
        except client.rpc_error as exc:
            code = exc.code().name
            if code == "UNAVAILABLE" and "connect" in (exc.details() or "").lower():
                return fail(f"the agent is not running (nothing answers on {socket_path}).\n"
                            "Start it with `systemctl start netagent` (or `make run` from a checkout).")
            if code == "NOT_FOUND":
                return fail(exc.details() or "not found", EXIT_NOT_FOUND)
            return fail(f"{code}: {exc.details()}")


def _client(command: str, socket_path: str) -> Any:
    if command in LIGHT_CLIENT and os.environ.get("NA_CLI_CLIENT", "light") != "grpcio":
        from ..lightrpc.client import LightClient
        return LightClient(socket_path, timeout=10)
    from ..client import Client
    return Client(socket_path=socket_path, timeout=10)


def _effective(config: Config | ClientSettings, client: Client) -> Any:
    if isinstance(config, ClientSettings):
        return config.effective(client)
    from . import agent_facts
    return agent_facts.effective(config, client)


REGISTRY_FIELDS = ("registry", "registryHealthy", "registryError", "registryLastSuccessUnixMs", "probedPorts")


def status(args: argparse.Namespace, config: Config | ClientSettings, c: Client) -> int:
    from . import kernel
    info = to_dict(getattr(config, "agent_info", None) or c.host_info())   # one GetHostInfo per run
    info["health"] = c.health()
    try:
        info["ruleset"] = "loaded" if kernel.table_loaded(config) else "MISSING"
    except OSError as exc:
        info["ruleset"] = f"unknown (cannot ask the kernel: {exc})"
    human = {k: v for k, v in info.items() if k not in REGISTRY_FIELDS}
    human["probedPorts"] = info["probedPorts"]
    human["registry"] = info["registry"] or "off"
    if info["registry"]:
        human["registryHealth"] = _registry_health(info)
    emit(info, args.json, pairs(human))
    return EXIT_OK


def _registry_health(info: dict[str, Any]) -> str:
    last = ago(from_ms(info["registryLastSuccessUnixMs"]))
    if info["registryHealthy"]:
        return f"healthy (last successful write {last})"
    return f"ERROR: {info['registryError'] or 'not connected yet'} (last successful write {last})"


def ls(args: argparse.Namespace, config: Config | ClientSettings, c: Client) -> int:
    labels = dict(kv.split("=", 1) for kv in args.label)
    # The agent's last reading (at most usage_interval_s old): a fresh one lists
    # every usage set in the kernel, ~0.2 s at 2,000 sandboxes (docs/cli.md).
    usage = {u.sandbox_id: u for u in c.usage(last_reading=True)}
    sandboxes = c.list(labels=labels, state=args.state)
    raws = []
    for s in sandboxes:
        d = to_dict(s)
        if s.sandbox_id in usage:
            d["usage"] = to_dict(usage[s.sandbox_id])
        raws.append(d)
    # JSON is for pipelines: no half-second rate sample unless asked for.
    interval = args.rates_interval if args.rates_interval is not None else (0.0 if args.json else 0.5)
    rates = None
    if interval > 0 and raws:
        from . import top as top_mod
        rates = top_mod.rates(config, raws, interval, connections=False)
        for d in raws:
            d["rates"] = {k: v for k, v in rates[d["sandboxId"]].to_dict().items() if v is not None}
    if args.json:   # the table's cells are not computed: ~20 ms at 2,000 sandboxes
        emit(raws, True, "", compact_when_piped=True)
        return EXIT_OK
    rows = [_ls_row(s, usage.get(s.sandbox_id)) for s in sandboxes]
    cols = ["sandbox", "slot", "sandbox_ip", "internet", "allow", "deny", "ports", "sent", "received", "labels"]
    if rates is not None:
        for r in rows:
            rate = rates[r["sandbox"]]
            r["rx"], r["tx"] = top_mod.human_rate(rate.rx_bps), top_mod.human_rate(rate.tx_bps)
        cols[3:3] = ["rx", "tx"]
    emit(raws, False, table(rows, cols))
    return EXIT_OK


def _ls_row(s: Any, usage: Any) -> dict[str, Any]:
    return {"sandbox": s.sandbox_id, "slot": s.network.slot, "sandbox_ip": s.network.sandbox_ip,
            "internet": "on" if s.policy.internet else "off",
            "allow": len(s.policy.allow_out), "deny": len(s.policy.deny_out),
            "ports": ",".join(_port_cell(p) for p in s.ports) or "-",
            "labels": ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) or "-", **usage_view.cells(usage)}


def _port_cell(p: Any) -> str:
    """3000->20000(up), (down), (?) until probed; UDP is not probed."""
    if p.protocol == pb.PROTOCOL_UDP:
        return f"{p.guest_port}->{p.host_port}/udp"
    state = "?" if not p.HasField("reachable") else ("up" if p.reachable else "down")
    return f"{p.guest_port}->{p.host_port}({state})"


def flows(args: argparse.Namespace, config: Config, c: Client) -> int:
    from . import flows_view
    return flows_view.command(args, c)


def show(args: argparse.Namespace, config: Config, c: Client) -> int:
    from . import kernel, registrycheck
    sbx = to_dict(c.get(args.sandbox))
    [usage] = c.usage(args.sandbox)
    sbx["usage"] = to_dict(usage)
    sbx["drift"] = kernel.sandbox_drift(config, sbx)
    info = c.host_info()
    read, latest, registry_drift = registrycheck.compare(
        config, args.sandbox, lambda: to_dict(c.get(args.sandbox)), sbx, info.node_id, info.node_address)
    sbx["ports"] = latest["ports"]   # the ports the registry was compared with
    sbx["registry"], sbx["registryDrift"] = read.to_dict(), registry_drift
    now = time.time()
    net = sbx["network"]
    human = pairs({"sandbox": sbx["sandboxId"], "state": sbx["state"], "slot": net["slot"],
                   "netns": net["netnsPath"], "tap": net["tap"], "sandbox ip": net["sandboxIp"],
                   "guest": f"{net['guestIp']}/{net['guestPrefixlen']} gw {net['gatewayIp']} mac {net['guestMac']}",
                   "boot arg": net["bootIpArg"], "host veth": net["hostVeth"], "policy": sbx["policy"],
                   "ports": [registrycheck.port_line(p, now) for p in sbx["ports"]],
                   "usage": usage_view.lines(usage),
                   "labels": dict(sorted(sbx["labels"].items()))})   # a map: its order varies by process
    human += "\n\n" + ("drift: none (kernel matches the agent)" if not sbx["drift"] else
                       "DRIFT:\n" + table(sbx["drift"], ["object", "problem"]))
    human += "\n\n" + _registry_section(read, registry_drift, now)
    emit(sbx, args.json, human)
    broken = sbx["drift"] or registry_drift or read.state == "unreachable"
    return EXIT_FAILURE if broken else EXIT_OK


def _registry_section(read: registrycheck.RegistryRead, found: list[dict[str, str]], now: float) -> str:
    from . import registrycheck
    if read.state == "off":
        return "registry: off (registry_url is empty: nothing is published)"
    if read.state == "unreachable":
        return f"registry: UNREACHABLE ({read.url}): {read.error}"
    text = f"registry record ({read.url}):\n"
    text += pairs(registrycheck.record_lines(read.record, now)) if read.record else "(none)"
    return text + "\n\n" + ("registry drift: none (the registry matches the agent)" if not found else
                            "REGISTRY DRIFT:\n" + table(found, ["object", "problem"]))


def probe(args: argparse.Namespace, config: Config, c: Client) -> int:
    from . import registrycheck
    if not 1 <= args.port <= 65535:
        return fail("PORT must be 1-65535", EXIT_USAGE)
    if args.timeout_ms is not None and not 0 < args.timeout_ms <= 10_000:
        return fail("--timeout-ms must be 1-10000", EXIT_USAGE)
    res = c.probe(args.sandbox, args.port, args.timeout_ms or 0)
    sbx = to_dict(c.get(args.sandbox))
    port = next((p for p in sbx["ports"] if int(p["guestPort"]) == args.port
                 and registrycheck.protocol(p) == "tcp"), None)
    timeout_ms = args.timeout_ms or round(config.probe.timeout_s * 1000)
    head = f"{args.sandbox} port {args.port}: " + probe_outcome.outcome(res.outcome, res.rtt_ms, args.port, timeout_ms)
    exposure = probe_outcome.exposure(args.sandbox, args.port, res.host_port)
    lines = [f"{head}, {exposure}"] if res.reachable else [head, exposure]
    if port:
        lines.append(probe_outcome.stored_view(port, bool(c.host_info().registry), time.time()))
        if note := probe_outcome.lag_note(res.reachable, port, config.probe.interval_s):
            lines.append(note)
    view = {k: port.get(k) for k in ("reachable", "changedUnixMs", "checkedUnixMs")} if port else None
    emit({"sandboxId": args.sandbox, "guestPort": args.port, "reachable": res.reachable, "outcome": res.outcome,
          "rttMs": round(res.rtt_ms, 3), "hostPort": res.host_port, "timeoutMs": timeout_ms, "words": lines[0],
          "view": view}, args.json, "\n".join(lines))
    return EXIT_OK if res.reachable else EXIT_FAILURE


def allocate(args: argparse.Namespace, config: Config, c: Client) -> int:
    s = c.allocate(args.sandbox, internet=_internet(args), allow_out=args.allow, deny_out=args.deny,
                   labels=dict(kv.split("=", 1) for kv in args.label))
    emit(to_dict(s), args.json, f"allocated {s.sandbox_id}: slot {s.network.slot}, sandbox ip "
                                f"{s.network.sandbox_ip}, netns {s.network.netns_path}, tap {s.network.tap}\n"
                                f"boot arg: {s.network.boot_ip_arg}")
    return EXIT_OK


def release(args: argparse.Namespace, config: Config, c: Client) -> int:
    released = c.release(args.sandbox)
    emit({"released": released}, args.json, f"released {args.sandbox}" if released else
         f"{args.sandbox} was not allocated (nothing to do)")
    return EXIT_OK


def expose(args: argparse.Namespace, config: Config, c: Client) -> int:
    p = c.expose(args.sandbox, args.port, args.proto, args.host_port)
    emit(to_dict(p), args.json, f"{args.proto}/{p.guest_port} of {args.sandbox} is on host port {p.host_port}")
    return EXIT_OK


def unexpose(args: argparse.Namespace, config: Config, c: Client) -> int:
    removed = c.unexpose(args.sandbox, args.port, args.proto)
    emit({"removed": removed}, args.json, "removed" if removed else "was not exposed (nothing to do)")
    return EXIT_OK


def policy(args: argparse.Namespace, config: Config, c: Client) -> int:
    if args.action == "set":
        s = c.update_policy(args.sandbox, internet=_internet(args), allow_out=args.allow, deny_out=args.deny)
    else:
        s = c.get(args.sandbox)
    d = to_dict(s.policy)
    emit(d, args.json, pairs({"internet": "on" if s.policy.internet else "off",
                              "allow_out": list(s.policy.allow_out), "deny_out": list(s.policy.deny_out)}))
    return EXIT_OK


def resync(args: argparse.Namespace, config: Config, c: Client) -> int:
    res = c.resync()
    table = "reloaded (it had been edited or removed)" if res.ruleset_reloaded else "unchanged"
    emit(to_dict(res), args.json, pairs({"host table": table, "elements re-added": res.elements,
                                         "registry": "every record rewritten"}))
    return EXIT_OK


def gc(args: argparse.Namespace, config: Config, c: Client) -> int:
    from . import hostcheck, kernel
    from .trace import table as tracetable
    traces = kernel.in_netns(config.host_netns, lambda: tracetable.stale(config.prefix))
    objects = hostcheck.leaked(config) + traces
    if args.apply and objects:
        hostcheck.remove(config, [o for o in objects if o["kind"] != "nft table"])
        kernel.in_netns(config.host_netns, lambda: tracetable.remove_tables(traces))
    human = table(objects, ["kind", "name"])
    if objects:
        human += "\n\n" + ("removed." if args.apply else "run again with --apply to remove them.")
    emit({"leaked": objects, "removed": bool(args.apply and objects)}, args.json, human)
    return EXIT_OK


def teardown(args: argparse.Namespace, config: Config, c: Client) -> int:
    from . import teardown as td
    try:
        c.host_info()
        return fail(f"the agent is running (it answers on {config.api.socket}) and would rebuild what teardown "
                    "removes: stop it first (`systemctl stop netagent`).")
    except c.rpc_error:
        pass
    try:
        done = td.teardown(config, args.force)
    except td.Refused as exc:
        return fail(str(exc))
    human = (f"removed {done['netns']} netns, {done['links']} links, "
             f"{'the' if done['table'] else 'no'} table inet {config.prefix}, "
             f"{len(done['state_files'])} state and record file(s), {len(done['dirs'])} interceptor dir(s)"
             + (f", stopped the interceptor left running (pid {done['interceptor']})" if done["interceptor"] else "")
             + (f" ({done['allocations']} allocation(s) forced)" if done["allocations"] else ""))
    emit(done, args.json, human)
    return EXIT_OK


def doctor(args: argparse.Namespace, config: Config, c: Client) -> int:
    from . import hostcheck, registrycheck
    checks = hostcheck.doctor(config)
    checks += [{"check": name, "status": status, "detail": detail, "fix": fix}
               for name, status, detail, fix in registrycheck.doctor(config)]
    emit(checks, args.json, table(checks, ["check", "status", "detail", "fix"]))
    return EXIT_FAILURE if any(ch["status"] == "fail" for ch in checks) else EXIT_OK


def trace(args: argparse.Namespace, config: Config, c: Client) -> int:
    from . import trace as trace_mod
    uplinks = list(c.host_info().uplink_addresses)
    try:
        if args.from_internet is not None:
            if args.sandbox or args.to or args.proto == "icmp":
                return fail("trace --from-internet HOST_PORT [--proto tcp|udp] takes no sandbox or --to", EXIT_USAGE)
            sandboxes = [to_dict(s) for s in c.list()]
            result = trace_mod.from_internet(config, sandboxes, args.from_internet, args.proto or "tcp", uplinks)
        elif args.sandbox and args.to:
            result = trace_mod.from_sandbox(config, to_dict(c.get(args.sandbox)), args.to, args.proto, uplinks)
        else:
            return fail("trace SANDBOX --to ADDR[:PORT] [--proto tcp|udp|icmp], or trace --from-internet HOST_PORT",
                        EXIT_USAGE)
    except trace_mod.UsageError as exc:
        return fail(str(exc), EXIT_USAGE)
    human = f"trace: {result['trace']}\n\n" + "\n".join(
        f"{i:3d}  {line}" for i, line in enumerate(result["path"], 1)) + f"\n\nverdict: {result['words']}"
    if result.get("note"):
        human += f"\nnote: {result['note']}"
    emit(result, args.json, human)
    return EXIT_FAILURE if result["verdict"] == "unknown" else EXIT_OK


def capture(args: argparse.Namespace, config: Config, c: Client) -> int:
    from . import capture as cap
    netns_path, ifname = cap.where(config, to_dict(c.get(args.sandbox)), args.iface)
    try:
        sock = cap.open_socket(netns_path, ifname, args.filter)
    except cap.FilterUnavailable as exc:
        return fail(str(exc))
    packets: list[dict[str, Any]] = []

    def each(pkt: Any) -> None:
        d = cap.describe(pkt)
        if args.json:
            packets.append({k: v for k, v in d.items() if k != "line"})
        elif not args.write:
            print(d["line"], flush=True)
    n = cap.capture(sock, args.count, args.timeout, each, args.write)
    summary = f"{n} packets on {ifname}" + (f" written to {args.write}" if args.write else "")
    if args.json:
        emit({"interface": ifname, "count": n, "file": args.write, "packets": packets}, True, "")
    else:
        print(summary, file=sys.stderr if not args.write else sys.stdout)
    return EXIT_OK


def top(args: argparse.Namespace, config: Config, c: Client) -> int:
    from . import top as top_mod
    samples = args.count if args.count else 1 if (args.once or args.json or not sys.stdout.isatty()) else None
    try:
        top_mod.run(config, lambda: [to_dict(s) for s in c.list()], args.interval, samples, args.json, emit,
                    _verdict_feed(c))
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def _verdict_feed(c: Client) -> Callable[[], list[dict[str, Any]]]:
    """Entries of the FIRST_PAYLOAD_VERDICTS events retained since the last call."""
    from ..api import netagent_pb2 as pb
    cursor = 0

    def new() -> list[dict[str, Any]]:
        nonlocal cursor
        out: list[dict[str, Any]] = []
        try:
            for ev in c.watch_events(cursor, timeout=0.3):
                cursor = ev.cursor
                if ev.type == pb.EVENT_TYPE_FIRST_PAYLOAD_VERDICTS:
                    out += [{"sandbox": ev.sandbox_id, "destination": v.destination, "reason": v.reason,
                             "allowed": v.allowed, "denied": v.denied} for v in ev.verdicts]
        except c.rpc_error as exc:
            if exc.code().name != "DEADLINE_EXCEEDED":
                raise
        return out
    return new


def _internet(args: argparse.Namespace) -> bool | None:
    return None if args.internet is None else args.internet == "on"
