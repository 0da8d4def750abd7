"""The test bed's own DNS server (`python -m tests.testbed.dns_server ADDR`), in
the internet netns. It serves test zones only; everything else is NXDOMAIN."""
from __future__ import annotations

import socket
import sys

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

# name -> (type, value, ttl). "*.cdn.test" answers any name under cdn.test.
ZONE = {
    "allowed.test.": ("A", "203.0.113.10", 2),
    "alias.test.": ("CNAME", "allowed.test.", 60),
    "*.cdn.test.": ("A", "203.0.113.11", 60),
    "denied.test.": ("A", "192.0.2.20", 60),
}


def lookup(name: str) -> tuple[str, str, int] | None:
    if name in ZONE:
        return ZONE[name]
    parts = name.split(".", 1)
    return ZONE.get("*." + parts[1]) if len(parts) == 2 else None


def answer(wire: bytes) -> bytes:
    query = dns.message.from_wire(wire)
    response = dns.message.make_response(query)
    name = query.question[0].name.to_text().lower()
    found = lookup(name)
    while found:
        kind, value, ttl = found
        response.answer.append(dns.rrset.from_text(name, ttl, "IN", kind, value))
        if kind != "CNAME":
            break
        name, found = value, lookup(value)
    if not response.answer:
        response.set_rcode(dns.rcode.NXDOMAIN)
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
