"""docs/cli.md's "Real output", from one run: a daemon in the test bed, a light
guest serving on web-1's port 3000, then each command as an operator types it.
Prints the transcript (the bed's random prefix shown as `na`, its temporary
directory as `/tmp/t`); paste it into cli.md.

    .venv/bin/python -m tests.docs.cli_transcript
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

from tests.service.daemon import Daemon, write_config
from tests.testbed import sh
from tests.testbed.bed import LightGuest, Testbed, wait_until


def main() -> None:
    bed = Testbed().create()
    tmp = Path(tempfile.mkdtemp(prefix="cli-transcript-"))
    guest = None
    daemon = Daemon(write_config(bed, tmp, metrics_address="")).start()
    out: list[str] = []

    def tidy(text: str) -> str:
        text = text.replace(str(tmp), "/tmp/t").replace(f"/run/netns/{bed.host}", "/run/netns/host")
        return re.sub(rf"\b{bed.agent_prefix}(?=[-v ]|\b)", "na", text)

    def run(*args: str, show: str | None = None) -> str:
        res = sh.run(sh.PYTHON, "-m", "netagent", *args, "--config", str(daemon.config), check=False)
        out.append(f"$ netagent {show or ' '.join(args)}\n{tidy(res.stdout + res.stderr).rstrip()}\n"
                   f"(exit {res.returncode})\n")
        return res.stdout

    try:
        with daemon.client() as c:
            run("allocate", "web-1", "--label", "team=a")
            run("allocate", "job-7", "--internet", "off", "--allow", "203.0.113.0/24", "--allow", "allowed.test")
            guest = LightGuest.attach(bed, c.get("web-1").network, "t")
            bed.start_server(guest.name, "--http", "3000")
            run("expose", "web-1", "3000")
            run("expose", "web-1", "8080")
            run("expose", "job-7", "5353", "--proto", "udp")
            assert wait_until(lambda: any(p.reachable for p in c.get("web-1").ports if p.guest_port == 3000),
                              timeout=30), "port 3000 never answered a probe"
            run("status")
            run("ls", "--rates-interval", "0")
            run("show", "web-1")
            ip = c.get("job-7").network.sandbox_ip
            sh.run("nft", "delete", "element", "inet", bed.agent_prefix, "allow_net", f"{{ {ip} . 203.0.113.0/24 }}",
                   ns=bed.host)
            out.append(f"$ nft delete element inet na allow_net {{ {ip} . 203.0.113.0/24 }}   # by hand\n")
            run("show", "job-7")
            run("resync")
            run("policy", "set", "job-7", "--internet", "off", "--allow", "203.0.113.0/24", "--allow",
                "allowed.test")
            run("policy", "show", "job-7")
            run("unexpose", "web-1", "8080")
            run("release", "job-7")
            run("show", "job-7")
        print("```text\n" + "\n".join(out) + "```")
    finally:
        if guest:
            guest.stop()
        daemon.stop()
        bed.destroy()


if __name__ == "__main__":
    main()
