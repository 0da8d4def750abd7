"""docs/cli.md's "Real output" and "Debugging commands", from one run: a daemon
in the test bed, a light guest serving on web-1's port 3000 (and fetching a
page from 203.0.113.10:8000 about 20 times a second during the debugging
commands), then each command as an operator types it. Prints the two
transcripts (the bed's random prefix shown as `na`, its temporary directory as
`/tmp/t`); paste them into cli.md.

    .venv/bin/python -m tests.docs.cli_transcript
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

from tests.service.daemon import Daemon, write_config
from tests.testbed import sh
from tests.testbed.bed import HTTP_PORT, WEB_IP, LightGuest, Testbed, wait_until

FETCH_LOOP = """
import sys, time, urllib.request
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    try:
        urllib.request.urlopen(sys.argv[1], timeout=1).read()
    except OSError:
        pass
    time.sleep(0.05)
"""


def main() -> None:
    bed = Testbed().create()
    tmp = Path(tempfile.mkdtemp(prefix="cli-transcript-"))
    guest = None
    daemon = Daemon(write_config(bed, tmp, metrics_address="")).start()
    out: list[str] = []
    blocks: list[list[str]] = [out]

    def tidy(text: str) -> str:
        text = text.replace(str(tmp), "/tmp/t").replace(f"/run/netns/{bed.host}", "/run/netns/host")
        return re.sub(rf"\b{bed.agent_prefix}(?=[-_vy]|\b)", "na", text)

    def run(*args: str, show: str | None = None) -> str:
        res = sh.run(sh.PYTHON, "-m", "netagent", *args, "--config", str(daemon.config), check=False)
        out.append(f"$ netagent {tidy(show or ' '.join(args))}\n{tidy(res.stdout + res.stderr).rstrip()}\n"
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

            out = []          # the debugging commands, same daemon and sandboxes
            blocks.append(out)
            run("allocate", "ci-3", "--deny", "203.0.113.11")
            run("trace", "web-1", "--to", f"{WEB_IP}:{HTTP_PORT}")
            run("trace", "web-1", "--to", "169.254.169.254:80")
            run("trace", "ci-3", "--to", "203.0.113.11:443")
            run("trace", "job-7", "--to", "198.51.100.77", "--proto", "icmp")
            run("trace", "job-7", "--to", f"{WEB_IP}:53", "--proto", "udp")
            run("trace", "--from-internet", "20000")
            run("trace", "--from-internet", "20001")
            fetching = sh.popen(sh.PYTHON, "-c", FETCH_LOOP, f"http://{WEB_IP}:{HTTP_PORT}/", "60", ns=guest.name)
            try:
                run("top", "--once", "--interval", "1")
                run("ls")
                run("capture", "web-1", "--count", "6")
                run("capture", "web-1", "--count", "20", "-w", str(tmp / "web-1.pcap"))
                run("capture", "web-1", "--iface", "veth", "--count", "2", "--json")
            finally:
                fetching.kill()
                fetching.wait()
            run("release", "job-7")
            run("show", "job-7")
        for block in blocks:
            print("```text\n" + "\n".join(block) + "```\n")
    finally:
        if guest:
            guest.stop()
        daemon.stop()
        bed.destroy()


if __name__ == "__main__":
    main()
