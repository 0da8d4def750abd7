"""A guest's clients for the first-payload check (run in a light guest's netns).

get IP PORT SNI HOST      TLS (PORT 443; SNI "-" sends none) or plain HTTP
                          (PORT 80), one GET with this Host. Prints
                          "ok <body>", "reset", "timeout" or "error <why>".
rate IP SNI RATE SECONDS  new flows at RATE/s, each sending a real
                          ClientHello naming SNI and waiting for the answer;
                          prints JSON {ok, reset, timeout, other, rate}.
quic IP SNI               a QUIC-style client: a UDP 443 datagram first; with
                          no answer in 0.3 s, fall back to TLS over TCP.
                          Prints "udp" or "tcp-fallback <get result>".
resolve NAME              A records of NAME through the gateway resolver.
"""
from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import socket
import ssl
import sys
import time

GATEWAY = "169.254.0.22"


def get(ip: str, port: int, sni: str, host: str, timeout: float = 3.0) -> str:
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    try:
        raw = socket.create_connection((ip, port), timeout=timeout)
        if port == 443:
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE   # a throwaway certificate
            conn = ctx.wrap_socket(raw, server_hostname=None if sni == "-" else sni)
        else:
            conn = raw
        with conn:
            conn.sendall(request)
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
        body = data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace").strip()
        return f"ok {body}" if body else "reset"
    except (ConnectionResetError, ssl.SSLEOFError, BrokenPipeError):
        return "reset"
    except ssl.SSLError as exc:
        return "reset" if "EOF" in str(exc) or "RESET" in str(exc).upper() else f"error {exc}"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return f"error {exc}"


def client_hello(sni: str) -> bytes:
    ctx = ssl.create_default_context()
    out = ssl.MemoryBIO()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


async def rate(ip: str, sni: str, per_s: float, seconds: float) -> dict[str, float]:
    hello = client_hello(sni)
    counts = {"ok": 0, "reset": 0, "timeout": 0, "other": 0}

    async def one() -> None:
        try:
            async with asyncio.timeout(5):
                reader, writer = await asyncio.open_connection(ip, 443)
                writer.write(hello)
                answer = await reader.read(100)
                writer.close()
            counts["ok" if answer == b"hello\n" else "reset"] += 1
        except ConnectionResetError:
            counts["reset"] += 1
        except TimeoutError:
            counts["timeout"] += 1
        except OSError:
            counts["other"] += 1

    start = time.monotonic()
    tasks = []
    total = int(per_s * seconds)
    for i in range(total):
        delay = start + i / per_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    sent_in = time.monotonic() - start
    await asyncio.gather(*tasks)
    return {**counts, "rate": total / sent_in}


def _rate_worker(ip: str, sni: str, per_s: float, seconds: float) -> dict[str, float]:
    # The offered rate is the test's premise: keep the generator ahead of the rest of a loaded test
    # host (as the frame relay is), so a shortfall is the agent's, not the client's pacing.
    os.nice(-10)
    return asyncio.run(rate(ip, sni, per_s, seconds))


def quic(ip: str, sni: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        s.sendto(b"\xc0\x00\x00\x00\x01" + b"\0" * 1195, (ip, 443))   # a long-header Initial's size
        try:
            s.recv(2048)
            return "udp"
        except TimeoutError:
            return "tcp-fallback " + get(ip, 443, sni, sni)


def resolve(name: str) -> str:
    import dns.message
    import dns.query
    import dns.rdatatype
    r = dns.query.udp(dns.message.make_query(name, "A"), GATEWAY, timeout=2)
    return ",".join(rr.address for rrset in r.answer if rrset.rdtype == dns.rdatatype.A for rr in rrset) or "-"


def main(argv: list[str]) -> None:
    cmd, args = argv[0], argv[1:]
    if cmd == "get":
        print(get(args[0], int(args[1]), args[2], args[3]))
    elif cmd == "rate":   # split over processes: one Python loop opens ~700 flows/s
        workers = 4
        with multiprocessing.Pool(workers) as pool:
            parts = pool.starmap(_rate_worker, [(args[0], args[1], int(args[2]) / workers, float(args[3]))] * workers)
        total = {k: sum(p[k] for p in parts) for k in ("ok", "reset", "timeout", "other")}
        print(json.dumps({**total, "rate": sum(p["rate"] for p in parts)}))
    elif cmd == "quic":
        print(quic(args[0], args[1]))
    elif cmd == "resolve":
        print(resolve(args[0]))
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])
