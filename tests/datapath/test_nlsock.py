"""The kept netfilter netlink socket (netagent/firewall/nlsock.py) against a
real kernel, in two netns this test makes (and removes): one socket serves a
thread's requests, and a thread that moves netns is answered by the kernel
of the netns it is in, never from a socket made in another."""
from __future__ import annotations

import os
import threading

from netagent import netns
from netagent.firewall import nlsock
from netagent.firewall.generation import read_generation
from tests.conftest import require_datapath_prereqs
from tests.testbed import sh


def on_thread(fn):  # type: ignore[no-untyped-def]
    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            out["error"] = exc
    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out["result"]


def test_a_thread_keeps_one_socket_and_follows_its_netns():
    require_datapath_prereqs()
    a, b = f"nlsa{os.getpid():x}", f"nlsb{os.getpid():x}"
    sh.ip("netns", "add", a)
    sh.ip("netns", "add", b)
    try:
        for i in range(5):   # b's generation moves ahead of a's
            sh.run("nft", "add", "table", "inet", f"t{i}", ns=b)

        def reads() -> tuple[int, int, int, int, int]:
            netns.enter_for_good(netns.path_of(a))
            first = read_generation()
            sock = nlsock._local.sock[0]
            again = read_generation()
            assert nlsock._local.sock[0] is sock          # kept, not remade per request
            with netns.entered(netns.path_of(b)):
                in_b = read_generation()
            back = read_generation()
            return first, again, in_b, back, sock.fileno()
        first, again, in_b, back, _ = on_thread(reads)
        gen_a = on_thread(lambda: (netns.enter_for_good(netns.path_of(a)), read_generation())[1])
        gen_b = on_thread(lambda: (netns.enter_for_good(netns.path_of(b)), read_generation())[1])
        assert first == again == back == gen_a
        assert in_b == gen_b != gen_a
    finally:
        sh.ip("netns", "del", a, check=False)
        sh.ip("netns", "del", b, check=False)
