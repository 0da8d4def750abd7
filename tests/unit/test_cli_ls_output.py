"""`netagent ls --json` output: one compact line when piped, indented on a
terminal, the same content either way (issue 18). In-process, with a stand-in
for the gRPC client."""
from __future__ import annotations

import argparse
import contextlib
import io
import json

from netagent.api import netagent_pb2 as pb
from netagent.operator import commands, proto_dict
from netagent.operator.quick import ClientSettings


class Listing:
    """What the agent answers: two sandboxes, usage for the first only."""
    def list(self, labels=None, state=""):  # noqa: ANN001, ANN201
        return [pb.Sandbox(sandbox_id=f"s-{i}", network=pb.Network(slot=i, sandbox_ip=f"10.12.0.{2 * i + 1}"),
                           policy=pb.EgressPolicy(internet=True), labels={"team": "a"}, state="allocated")
                for i in range(2)]

    def usage(self, sandbox_id="", *, last_reading=False):  # noqa: ANN001, ANN201
        assert last_reading   # ls never makes the agent read the kernel
        counter = pb.UsageCounter(packets=2, bytes=300)
        path = pb.UsagePath(sent=counter, received=counter)
        return [pb.SandboxUsage(sandbox_id="s-0", egress=path, ingress=path, host=path)]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_ls(out: io.StringIO) -> str:
    args = argparse.Namespace(label=[], state="", json=True, rates_interval=None)
    with contextlib.redirect_stdout(out):
        assert commands.ls(args, ClientSettings("unused"), Listing()) == 0
    return out.getvalue()


def test_ls_json_is_one_compact_line_when_piped_and_indented_on_a_terminal():
    piped, terminal = run_ls(io.StringIO()), run_ls(Terminal())
    assert piped.count("\n") == 1 and ": " not in piped
    assert terminal.startswith("[\n  {\n") and terminal.count("\n") > 20
    assert json.loads(piped) == json.loads(terminal)
    rows = json.loads(piped)
    expected = proto_dict.sandbox(Listing().list()[0])
    expected["usage"] = proto_dict.sandbox_usage(Listing().usage(last_reading=True)[0])
    assert rows[0] == expected and "usage" not in rows[1]   # s-1: allocated after the reading
