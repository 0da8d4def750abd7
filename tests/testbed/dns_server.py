"""The test bed's own DNS server (`python -m tests.testbed.dns_server ADDR`), in
the internet netns. It serves test zones only (TEST-NET and documentation
addresses); everything else is NXDOMAIN. Answers follow the question's type:
a name without records of that type gets an empty NOERROR ("no data"), and
negative answers carry the SOA of `test.`, as a real server's do."""
from __future__ import annotations

import socket
import sys

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

# name -> [(type, value, ttl)]. "*.cdn.test" answers any name under cdn.test.
ZONE = {
    "allowed.test.": [("A", "203.0.113.10", 2)],
    "alias.test.": [("CNAME", "allowed.test.", 60)],
    "*.cdn.test.": [("A", "203.0.113.11", 60)],
    "denied.test.": [("A", "192.0.2.20", 60)],
    "public.test.": [("A", "203.0.113.10", 30), ("AAAA", "2001:db8::10", 30), ("TXT", '"hello"', 30),
                     ("MX", "10 mail.public.test.", 30), ("HTTPS", "1 . alpn=h2 ipv4hint=203.0.113.10", 30)],
    "_http._tcp.public.test.": [("SRV", "0 5 80 public.test.", 30)],
    "other.test.": [("A", "203.0.113.11", 30)],
    "api.test.": [("A", "203.0.113.13", 30)],    # request interception (tests/datapath/test_interception_agent.py)
    # Public URLs of the HAProxy edge (tests/edge/hap.py DOMAIN) on the host's uplink address (hairpin).
    "*.sbx.edge.test.": [("A", "198.51.100.2", 30)],
    # the first-payload check's many-flows test: its own address, a long TTL
    "fast.test.": [("A", "203.0.113.12", 300)],
}
SOA = ("test.", 5, "ns.test. hostmaster.test. 1 3600 600 86400 5")


def lookup(name: str) -> list[tuple[str, str, int]] | None:
    if name in ZONE:
        return ZONE[name]
    parts = name.split(".", 1)
    return ZONE.get("*." + parts[1]) if len(parts) == 2 else None


def answer(wire: bytes) -> bytes:
    query = dns.message.from_wire(wire)
    response = dns.message.make_response(query)
    name = query.question[0].name.to_text().lower()
    want = dns.rdatatype.to_text(query.question[0].rdtype)
    records = lookup(name)
    exists = records is not None
    while records:
        cname = [r for r in records if r[0] == "CNAME"]
        for kind, value, ttl in cname or [r for r in records if r[0] == want]:
            response.answer.append(dns.rrset.from_text(name, ttl, "IN", kind, value))
        if not cname or want == "CNAME":
            break
        name, records = cname[0][1], lookup(cname[0][1])
    if not response.answer:
        if not exists:
            response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(dns.rrset.from_text(SOA[0], SOA[1], "IN", "SOA", SOA[2]))
    return response.to_wire()


def main() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((sys.argv[1], 53))
    print("ready", flush=True)
    while True:
        data, addr = sock.recvfrom(4096)
        try:
            sock.sendto(answer(data), addr)
        except Exception:  # noqa: BLE001 - a bad query gets no answer
            pass


if __name__ == "__main__":
    main()
