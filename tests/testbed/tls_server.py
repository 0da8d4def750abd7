"""Servers for the first-payload check, in the internet netns
(`python -m tests.testbed.tls_server ADDR CERT KEY [--hello ADDR2]`).

ADDR:443  TLS with one certificate for several names; after the handshake, an
          HTTP/1.1 GET is answered with "served sni=<SNI> host=<Host>".
ADDR:80   plain HTTP, answered with "served host=<Host>".
ADDR:443/udp  echoes datagrams (a QUIC endpoint stand-in).
ADDR2:443 (--hello) reads a ClientHello and answers "hello" without a
          handshake: light enough for 1,000 new flows per second.
"""
from __future__ import annotations

import argparse
import asyncio
import ssl
import sys


def _host_of(head: bytes) -> str:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"host":
            return value.strip().decode(errors="replace")
    return "-"


async def _answer_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, prefix: str) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        body = f"served {prefix}host={_host_of(head)}\n".encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        await writer.drain()
    except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("addr")
    ap.add_argument("cert")
    ap.add_argument("key")
    ap.add_argument("--hello")
    args = ap.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    # busybox wget (the QEMU guest's client) sends no signature_algorithms
    # extension, so TLS 1.2 falls back to SHA-1 signatures, which OpenSSL 3
    # allows only at security level 0: without this the handshake fails with
    # "no shared cipher" and the guest sees a bare close.
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    names: dict[int, str] = {}

    def remember_sni(obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        names[id(obj)] = name or "-"
    ctx.sni_callback = remember_sni  # type: ignore[assignment]

    async def on_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sni = names.pop(id(writer.get_extra_info("ssl_object")), "-")
        await _answer_http(reader, writer, f"sni={sni} ")

    async def on_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _answer_http(reader, writer, "")

    async def on_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if await asyncio.wait_for(reader.read(65536), 5):
                writer.write(b"hello\n")
                await writer.drain()
        except (TimeoutError, OSError):
            pass
        finally:
            writer.close()

    servers = [await asyncio.start_server(on_tls, args.addr, 443, ssl=ctx, backlog=4096),
               await asyncio.start_server(on_http, args.addr, 80, backlog=1024)]
    if args.hello:
        servers.append(await asyncio.start_server(on_hello, args.hello, 443, backlog=4096))
    await asyncio.get_running_loop().create_datagram_endpoint(Echo, local_addr=(args.addr, 443))
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
