"""The interceptor's rendered HAProxy config: Debian's haproxy accepts it
without a warning, and it keeps the properties the security model relies on."""
from __future__ import annotations

import subprocess

from netagent.intercept.ca import InterceptCA, write_private
from netagent.intercept.haconfig import InterceptSettings, render


def test_rendered_config_is_valid_and_has_no_warning(tmp_path):
    s = InterceptSettings(state_dir=tmp_path / "state", run_dir=tmp_path / "run", max_conns_per_source=7)
    s.cert_dir.mkdir(parents=True)
    s.run_dir.mkdir()
    write_private(s.default_pem, InterceptCA(tmp_path / "ca").leaf_pem("netagent-intercept.invalid"))
    s.crt_list.write_text("")
    text = render(s)
    s.config_path.write_text(text)
    res = subprocess.run(["haproxy", "-c", "-f", str(s.config_path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "WARNING" not in res.stdout + res.stderr, res.stdout + res.stderr
    assert f"stats socket {s.admin_socket} mode 600 level admin" in text
    assert "ipv4@" not in text and "stats enable" not in text           # no TCP admin or stats listener
    assert "ssl verify required" in text and "sni ssl_fc_sni" in text and "ssl-server-verify required" in text
    assert "sc0_conn_cur gt 7" in text


def test_legacy_guest_tls_lowers_only_the_guest_listeners_security_level(tmp_path):
    """The opt-in for guests whose TLS sends no signature_algorithms (busybox wget): off by
    default; on, it lowers the guest-facing listener alone, never the upstream check."""
    def tls_lines(**kw):   # type: ignore[no-untyped-def]
        text = render(InterceptSettings(state_dir=tmp_path / "state", run_dir=tmp_path / "run", **kw))
        return [line for line in text.splitlines() if " ssl " in line]
    assert not any("SECLEVEL" in line for line in tls_lines())
    on = tls_lines(legacy_guest_tls=True)
    assert [line.split()[0] for line in on if "@SECLEVEL=0" in line] == ["bind"]
    assert any(line.split()[0] == "server" and "verify required" in line and "SECLEVEL" not in line for line in on)
