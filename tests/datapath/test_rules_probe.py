"""The host table's rules fingerprint (netagent/firewall/rules_probe.py) against
a real kernel: rules/netagent.nft rendered and filled as the agent loads it, in
a netns each test makes (and removes); packets go over that netns' loopback only."""
from __future__ import annotations

import json
import threading
import time

from netagent import netns
from netagent.addressing import AddressPlan
from netagent.config import Config
from netagent.firewall import elements as el
from netagent.firewall import nlsock, rules_probe, ruleset
from netagent.firewall.nft import connect
from netagent.operator.kernel import in_netns
from tests.datapath.helpers import counter_packets, scratch_netns
from tests.testbed import sh

CONFIG = Config(prefix="rfp", uplink="up0", state_dir="/nonexistent")
TABLE = CONFIG.prefix
SOURCE = ruleset.read_rules(ruleset.HOST_RULES)


def sandbox_elements(sandboxes: range) -> list[el.Element]:
    """What an allocated sandbox puts in the table (as the churn bench does)."""
    plan = AddressPlan(CONFIG)
    return [e for i in sandboxes for e in el.usage_elements(str(plan.slot(i).sandbox_ip))
            + el.mark_elements(plan.slot(i), 0) + [el.egress_element(plan.slot(i), True)]
            + el.slot_elements(plan.slot(i))]


def load(ns: str, sandboxes: range) -> None:
    """The agent's full load: the table replaced, filled, in one transaction."""
    fixed = ruleset.config_elements(CONFIG, "up0", ["192.0.2.1"])
    sh.run("nft", "-f", "-", input=ruleset.full_load_script(CONFIG, SOURCE, fixed, sandbox_elements(sandboxes)), ns=ns)


def fingerprint(ns: str) -> str | None:
    return in_netns(netns.path_of(ns), lambda: rules_probe.fingerprint("inet", TABLE))


def nft(ns: str, *commands: str) -> None:
    sh.run("nft", "-f", "-", input="".join(c + "\n" for c in commands), ns=ns)


def rule_handles(ns: str, chain: str) -> list[int]:
    out = sh.run("nft", "-j", "list", "chain", "inet", TABLE, chain, ns=ns).stdout
    return [o["rule"]["handle"] for o in json.loads(out)["nftables"] if "rule" in o]


def inline_counts(ns: str, chain: str) -> list[tuple[int, int]]:
    """(counter packets, quota bytes used) of each rule of the chain with both."""
    out = sh.run("nft", "-j", "list", "chain", "inet", TABLE, chain, ns=ns).stdout
    found = []
    for o in json.loads(out)["nftables"]:
        stmts = {k: v for s in o.get("rule", {}).get("expr", []) for k, v in s.items()}
        if "counter" in stmts and "quota" in stmts:
            found.append((stmts["counter"]["packets"], stmts["quota"].get("used", 0)))
    return found


def test_the_fingerprint_stays_with_elements_counters_and_other_tables():
    with scratch_netns("rfpsame") as ns:
        load(ns, range(10))
        # loopback packets through an inline counter and quota, and a named counter
        nft(ns, f'add rule inet {TABLE} input iifname "lo" counter quota until 1000 mbytes',
            f'add rule inet {TABLE} input iifname "lo" counter name drop_smtp',
            f"add map inet {TABLE} verdicts {{ type ipv4_addr : verdict; }}")   # its jumps count as chain uses
        sh.ip("link", "set", "lo", "up", ns=ns)
        before = fingerprint(ns)
        assert before is not None and len(before) == 16

        more = sandbox_elements(range(10, 600))                                   # ~7,700 elements
        nft(ns, el.to_text(TABLE, more))
        nft(ns, f"add element inet {TABLE} conn_count {{ 10.12.0.9 }}",
            f"add element inet {TABLE} fqdn_ips {{ 10.12.0.9 . 192.0.2.80 timeout 60s }}",
            f"add element inet {TABLE} verdicts {{ 10.12.0.9 : jump mode_blocked }}")
        assert fingerprint(ns) == before
        sh.run("nft", "-j", "-f", "-", input=json.dumps(el.to_json(TABLE, el.delete(more))), ns=ns)
        nft(ns, f"flush set inet {TABLE} sbx_ifaces")
        assert fingerprint(ns) == before

        sh.run("ping", "-c", "3", "-i", "0.2", "-q", "127.0.0.1", ns=ns)
        (packets, used), = inline_counts(ns, "input")
        assert packets > 0 and used > 0 and counter_packets(ns, TABLE, "drop_smtp") > 0   # the counts moved
        assert fingerprint(ns) == before
        nft(ns, f"reset counters table inet {TABLE}", f"reset quotas table inet {TABLE}")
        assert fingerprint(ns) == before

        nft(ns, "add table inet other", "add chain inet other c { type filter hook input priority 0; }",
            "add set inet other s { type ipv4_addr; }", "add counter inet other k")   # another table's
        assert fingerprint(ns) == before


def test_the_fingerprint_changes_with_the_rules_and_is_none_without_the_table():
    with scratch_netns("rfpdiff") as ns:
        assert fingerprint(ns) is None
        load(ns, range(3))
        loaded = fingerprint(ns)
        seen = {"loaded": loaded}
        nft(ns, f"add rule inet {TABLE} mode_blocked counter")
        seen["a rule added"] = fingerprint(ns)
        nft(ns, f"delete rule inet {TABLE} mode_blocked handle {rule_handles(ns, 'mode_blocked')[-1]}")
        assert fingerprint(ns) == loaded            # the same rules again
        nft(ns, f"delete rule inet {TABLE} mode_open handle {rule_handles(ns, 'mode_open')[0]}")
        seen["a rule deleted"] = fingerprint(ns)
        nft(ns, f"chain inet {TABLE} forward {{ policy drop; }}")
        seen["a policy changed"] = fingerprint(ns)
        nft(ns, f"add set inet {TABLE} extra {{ type ipv4_addr; }}")
        seen["a set added"] = fingerprint(ns)
        load(ns, range(3))
        seen["reloaded, same text"] = fingerprint(ns)   # a new table: new handles
        assert len(set(seen.values())) == len(seen), seen
        nft(ns, f"delete table inet {TABLE}")
        assert fingerprint(ns) is None


def test_dumps_interrupted_by_element_commits_are_read_again(monkeypatch):
    """A thread commits element adds and deletes (~300/s here, 15 times the
    churn bench's rate) while another fingerprints. The pause between commits
    keeps this about re-reading, not about the bound: with none, on this 2-core
    host under another load, commits landed inside 10 reads running."""
    restarts: list[int] = []
    plain_reader = nlsock.dump_reader

    def counting_reader(kind: int, what: str):  # type: ignore[no-untyped-def]
        answer = plain_reader(kind, what)

        def counted(data: bytes, seq: int):  # type: ignore[no-untyped-def]
            end = answer(data, seq)
            if end is not None and not end[0]:   # read to its end, interrupted: asked again
                restarts.append(kind)
            return end
        return counted

    monkeypatch.setattr(nlsock, "dump_reader", counting_reader)
    with scratch_netns("rfpintr") as ns:
        load(ns, range(50))
        path = netns.path_of(ns)
        stop, commits = threading.Event(), [0]

        def churn() -> None:
            netns.enter_for_good(path)
            ctx = connect()
            while not stop.is_set():
                ctx.run(f"add element inet {TABLE} egress_open {{ 10.99.0.1 }}")
                ctx.run(f"delete element inet {TABLE} egress_open {{ 10.99.0.1 }}")
                commits[0] += 2
                time.sleep(0.002)

        def probe() -> tuple[str | None, list[str | None]]:
            quiet = rules_probe.fingerprint("inet", TABLE)
            churner = threading.Thread(target=churn)
            churner.start()
            try:
                return quiet, [rules_probe.fingerprint("inet", TABLE) for _ in range(200)]
            finally:
                stop.set()
                churner.join()

        quiet, busy = in_netns(path, probe)
        assert quiet is not None and set(busy) == {quiet}
        assert commits[0] > 100 and restarts, (commits, restarts)   # the kernel did interrupt dumps
