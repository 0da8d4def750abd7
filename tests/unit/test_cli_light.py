"""The CLI's light path (issue 18): `--help` and the commands status and ls
import no kernel library, no gRPC and no pydantic they do not need (status
asks netlink for its table check: firewall/table_probe.py). Checked in
a fresh interpreter, since this process has imported everything already."""
from __future__ import annotations

import json
import subprocess
import sys

from netagent.operator.quick import ClientSettings

HEAVY = ("pyroute2", "nftables", "grpc", "pydantic")

_IMPORTED_BY = r"""
import contextlib, io, json, sys
from netagent import cli
argv = json.loads(sys.argv[1])
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    {call}
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}})))
"""


def imported_by(call: str, argv: list[str]) -> set[str]:
    code = _IMPORTED_BY.format(call=call)
    out = subprocess.run([sys.executable, "-c", code, json.dumps(argv)], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return set(json.loads(out))


def test_help_imports_no_kernel_library_grpc_or_pydantic():
    loaded = imported_by("cli.main(argv)", ["--help"])
    assert "argparse" in loaded      # the parser ran
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_every_command_parses_without_importing_its_code():
    loaded = imported_by("cli.build_parser(argv).parse_args(argv)", ["ls", "--json", "--label", "a=b"])
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_status_and_ls_code_imports_grpc_but_no_pyroute2_nftables_or_pydantic():
    loaded = imported_by("from netagent.operator import commands, kernel, quick; "
                         "from netagent.firewall import table_probe; quick.ClientSettings.read(None)", [])
    assert "grpc" in loaded          # they do talk to the agent
    assert not loaded & {"pyroute2", "nftables", "pydantic"}, sorted(loaded & {"pyroute2", "nftables", "pydantic"})


def test_client_settings_read_flat_and_section_keys_and_env(tmp_path):
    f = tmp_path / "n.toml"
    f.write_text('prefix = "zz"\nhost_netns = "try"\n[api]\nsocket = "/tmp/a.sock"\n')
    s = ClientSettings.read(str(f), environ={})
    assert (s.socket, s.prefix, s.host_netns) == ("/tmp/a.sock", "zz", "/run/netns/try")
    s = ClientSettings.read(str(f), environ={"NETAGENT_API_SOCKET": "/tmp/b.sock", "NETAGENT_PREFIX": "yy"})
    assert (s.socket, s.prefix) == ("/tmp/b.sock", "yy")
    assert ClientSettings.read(None, environ={}).socket == "/run/netagent/netagent.sock"
