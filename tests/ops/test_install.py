"""`make install` into a scratch root (DESTDIR): the wheel built from this tree
in a fresh venv, the units, the example configs; the units pass
`systemd-analyze verify`; the installed agent runs (its rules come from the
installed package, not this checkout) and the installed edge renders HAProxy's
config; a second install keeps the operator's configs; `make uninstall`."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.ops.installed import PREFIX, UNITS, installed, make, venv_python
from tests.service.daemon import Daemon, write_config
from tests.testbed import sh


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("install") / "root"
    make("install", root)
    return root


def test_make_install_puts_the_package_units_and_configs_in_place(root, tmp_path):
    for path in ("etc/netagent/netagent.toml", "etc/netagent-edge/edge.env", "opt/netagent/share/alerts.yml",
                 "opt/netagent/share/dashboard.json", "opt/netagent/docs/operations.md",
                 *(f"etc/systemd/system/{u}" for u in UNITS)):
        assert (root / path).is_file(), path
    assert os.readlink(root / "usr/local/bin/netagent") == f"{PREFIX}/.venv/bin/netagent"
    # every unit that runs netagent runs the one installed binary
    binaries = {word for u in UNITS for word in (root / "etc/systemd/system" / u).read_text().split()
                if word.rsplit("=", 1)[-1].endswith("/bin/netagent")}
    assert {b.rsplit("=", 1)[-1] for b in binaries} == {f"{PREFIX}/.venv/bin/netagent"}, binaries
    # the scripts name the final location, not the scratch root
    assert (root / "opt/netagent/.venv/bin/netagent").read_text().startswith(f"#!{PREFIX}/.venv/bin/python")
    where = installed(root, "-c", "import netagent, pathlib; print(pathlib.Path(netagent.__file__).parent)",
                      cwd=tmp_path)
    package = Path(where.stdout.strip())
    assert package.is_relative_to(root), where.stdout + where.stderr
    for data in ("rules/netagent.nft", "rules/slot.nft", "rules/firstpayload.nft", "rules/pps.nft",
                 "edge/haproxy.cfg.tmpl", "edge/haproxy-shard.cfg.tmpl", "systemd/netagent.service",
                 "systemd/netagent.toml.example", "ops/alerts.yml", "api/netagent.proto"):
        assert (package / data).is_file(), data
    assert not (package / "rules").is_symlink()
    # the example config is valid as installed, and scapy (trace, capture) imports
    checked = installed(root, "-m", "netagent", "config", "check", str(root / "etc/netagent/netagent.toml"),
                        cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert installed(root, "-c", "import scapy.layers.inet", cwd=tmp_path).returncode == 0


def test_the_installed_units_pass_systemd_analyze_verify(root):
    """In the scratch root (--root), with the host's /usr bind-mounted in a mount
    namespace of the test's own, so haproxy, /bin/kill and systemd's targets resolve."""
    for link in ("bin", "sbin", "lib", "lib64"):
        if not (root / link).is_symlink():
            (root / link).symlink_to(f"usr/{link}")
    (root / "usr").mkdir(exist_ok=True)
    units = " ".join(f"/etc/systemd/system/{u}" for u in UNITS)
    script = (f"mount --make-rprivate / && mount --bind /usr {root}/usr && "
              f"exec systemd-analyze verify --root={root} {units}")
    out = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stderr.strip(), out.stdout + out.stderr


def test_the_installed_agent_serves_and_the_installed_edge_renders_haproxys_config(root, bed, tmp_path):
    python = venv_python(root)

    class InstalledDaemon(Daemon):
        cwd = str(tmp_path)

        def command(self) -> list[str]:
            return [str(python), "-m", "netagent", "serve", "--config", str(self.config)]
    daemon = InstalledDaemon(write_config(bed, tmp_path), env={"PYTHONPATH": ""}).start()   # rules loaded
    try:
        table = sh.run("nft", "list", "table", "inet", bed.agent_prefix, ns=bed.host).stdout   # rules/netagent.nft
        assert "chain forward" in table and "netagent_slot_capacity" in daemon.scrape(bed.host)
    finally:
        assert daemon.stop() == 0

    edge = tmp_path / "edge"
    rendered = installed(root, "-m", "netagent", "edge", "--domain", "sbx.example.com", "--write-haproxy-config",
                         str(edge / "haproxy.cfg"), "--haproxy-socket", str(edge / "haproxy.sock"), "--map-dir",
                         str(edge / "maps"), "--errors-dir", str(edge / "errors"), "--http-listen",
                         "127.0.0.1:8080", cwd=tmp_path)   # checked, never bound
    assert rendered.returncode == 0, rendered.stderr
    checked = subprocess.run(["haproxy", "-c", "-f", str(edge / "haproxy.cfg")], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_second_install_keeps_the_configs_and_uninstall_removes_the_rest(root):
    config = root / "etc/netagent/netagent.toml"
    config.write_text(config.read_text() + "\n# the operator's edit\n")
    make("install", root)
    assert config.read_text().endswith("# the operator's edit\n")
    make("uninstall", root)
    for path in ("opt/netagent/.venv", "opt/netagent/share", "usr/local/bin/netagent",
                 *(f"etc/systemd/system/{u}" for u in UNITS)):
        assert not os.path.lexists(root / path), path
    assert config.exists() and (root / "etc/netagent-edge/edge.env").exists()
    shutil.rmtree(root)
