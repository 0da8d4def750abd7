"""status, ls and show through lightrpc (the CLI's default for them) print what
they print through grpcio (NA_CLI_CLIENT=grpcio), against a real agent."""
from __future__ import annotations

import difflib
import json
import os
import subprocess
import time

import pytest

from tests.service.daemon import Daemon, write_config
from tests.testbed import sh

POOL_SIZE = 4


@pytest.fixture
def quiet_daemon(bed, tmp_path):
    """No registry: nothing in the output moves between two runs (once the
    warm pool has refilled)."""
    d = Daemon(write_config(bed, tmp_path, registry_url="", pool_size=POOL_SIZE)).start()
    try:
        yield d
    finally:
        d.stop()


# `python -m netagent`, but a light run that imported grpcio exits 99: the
# comparison would otherwise pass with lightrpc not used at all.
_RUN = """import os, sys
from netagent import cli
code = cli.main(sys.argv[1:])
sys.exit(99 if os.environ["NA_CLI_CLIENT"] == "light" and "grpc" in sys.modules else code)"""


def cli(daemon: Daemon, client: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "NA_CLI_CLIENT": client}
    res = subprocess.run([sh.PYTHON, "-c", _RUN, *args, "--config", str(daemon.config)], cwd=sh.REPO,
                         env=env, capture_output=True, text=True, timeout=60)
    return res.returncode, res.stdout, res.stderr


def both(daemon: Daemon, *args: str) -> tuple[tuple[int, str, str], tuple[int, str, str]]:
    return cli(daemon, "light", *args), cli(daemon, "grpcio", *args)


def assert_same_fields(light, grpcio, where: str = "") -> None:
    """Field by field, so a difference names its path."""
    assert type(light) is type(grpcio), where
    if isinstance(light, dict):
        assert sorted(light) == sorted(grpcio), where
        for key in light:
            assert_same_fields(light[key], grpcio[key], f"{where}.{key}")
    elif isinstance(light, list):
        assert len(light) == len(grpcio), where
        for i, (a, b) in enumerate(zip(light, grpcio, strict=True)):
            assert_same_fields(a, b, f"{where}[{i}]")
    else:
        assert light == grpcio, where


def test_status_ls_and_show_print_the_same_through_both_clients(quiet_daemon):
    with quiet_daemon.client() as c:
        for i in range(3):
            c.allocate(f"lr-{i}", labels={"team": "a", "n": str(i)}, internet=i != 1, allow_out=["203.0.113.0/24"])
        c.expose("lr-0", 5353, "udp")   # UDP is not probed: nothing changes between the two runs
        deadline = time.monotonic() + 30     # the warm pool refilled: readySlots stays put
        while c.host_info().ready_slots < POOL_SIZE:
            assert time.monotonic() < deadline, "the warm pool did not refill"
            time.sleep(0.1)

    for args in (("status", "--json"), ("ls", "--json"), ("show", "lr-0", "--json")):
        (code_l, out_l, err_l), (code_g, out_g, err_g) = both(quiet_daemon, *args)
        assert (code_l, err_l) == (code_g, err_g) == (0, ""), (args, err_l, err_g)
        assert_same_fields(json.loads(out_l), json.loads(out_g), " ".join(args))
    status = json.loads(cli(quiet_daemon, "light", "status", "--json")[1])
    assert status["health"] == "SERVING" and status["allocations"] == 3
    rows = json.loads(cli(quiet_daemon, "light", "ls", "--json")[1])
    assert sorted(r["sandboxId"] for r in rows) == ["lr-0", "lr-1", "lr-2"]

    for args in (("status",), ("ls", "--rates-interval", "0"), ("show", "lr-0")):
        light, grpcio = both(quiet_daemon, *args)
        assert light == grpcio and light[0] == 0, (args, "\n".join(difflib.unified_diff(
            grpcio[1].splitlines(), light[1].splitlines(), "grpcio", "light", lineterm="")))


def test_an_unknown_sandbox_fails_alike_through_both_clients(quiet_daemon):
    light, grpcio = both(quiet_daemon, "show", "no-such-sandbox")
    assert light == grpcio, (light, grpcio)
    code, out, err = light
    assert code == 3 and out == "" and err == "netagent: sandbox 'no-such-sandbox' is not allocated on this host\n"
