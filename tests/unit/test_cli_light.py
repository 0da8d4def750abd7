"""The CLI's light path (issue 18): `--help` and the commands status and ls
import no kernel library, no grpcio and no pydantic (status asks netlink for
its table check: firewall/table_probe.py; their calls go through lightrpc). Checked in
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


def test_status_and_ls_code_imports_no_grpc_pyroute2_nftables_or_pydantic():
    loaded = imported_by("from netagent.operator import commands, kernel, quick; "
                         "from netagent.lightrpc import client; import hpack; "
                         "from netagent.firewall import table_probe; quick.ClientSettings.read(None)", [])
    assert "google" in loaded        # the messages are protobuf's
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_status_without_an_agent_says_so_through_the_light_client_without_grpc(tmp_path):
    """The whole command, to its error message: the calls went through lightrpc."""
    f = tmp_path / "n.toml"
    f.write_text(f'api_socket = "{tmp_path}/none.sock"\n')
    code = ("import contextlib, io, json, sys\nfrom netagent import cli\nerr = io.StringIO()\n"
            "with contextlib.redirect_stderr(err):\n    rc = cli.main(['status', '--config', sys.argv[1]])\n"
            "print(json.dumps([rc, err.getvalue(), sorted({m.split('.')[0] for m in sys.modules})]))")
    out = subprocess.run([sys.executable, "-c", code, str(f)], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    rc, err, loaded = json.loads(out)
    assert rc == 1 and f"the agent is not running (nothing answers on {tmp_path}/none.sock)" in err, err
    assert "hpack" in loaded and not set(loaded) & set(HEAVY), sorted(set(loaded) & set(HEAVY))


def test_client_settings_read_flat_and_section_keys_and_env(tmp_path):
    f = tmp_path / "n.toml"
    f.write_text('prefix = "zz"\nhost_netns = "try"\n[api]\nsocket = "/tmp/a.sock"\n')
    s = ClientSettings.read(str(f), environ={})
    assert (s.socket, s.prefix, s.host_netns) == ("/tmp/a.sock", "zz", "/run/netns/try")
    s = ClientSettings.read(str(f), environ={"NETAGENT_API_SOCKET": "/tmp/b.sock", "NETAGENT_PREFIX": "yy"})
    assert (s.socket, s.prefix) == ("/tmp/b.sock", "yy")
    assert ClientSettings.read(None, environ={}).socket == "/run/netagent/netagent.sock"
