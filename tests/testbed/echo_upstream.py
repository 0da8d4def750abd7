"""An "internet" upstream for the interception tests, in the internet netns
(`python -m tests.testbed.echo_upstream ADDR CERT KEY LOG`): HTTP/1.1 with
keep-alive on ADDR:443 (TLS) and ADDR:80. Each request's head is appended to
LOG as one JSON line (method, path, headers) and echoed back as JSON; a path
starting /redirect answers 302 to https://other.test/landed; a WebSocket
upgrade is accepted (101) and every byte after it echoed back."""
from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import ssl

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, log_path: str, sni: str) -> None:
    try:
        while True:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            lines = head.decode(errors="replace").split("\r\n")
            method, path, _ = (lines[0].split(" ") + ["", ""])[:3]
            headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if ":" in line]
            lower = {k.lower(): v for k, v in headers}
            if "content-length" in lower:
                await reader.readexactly(int(lower["content-length"]))
            elif lower.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            record = {"sni": sni, "method": method, "path": path, "headers": headers}
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if lower.get("upgrade", "").lower() == "websocket":
                accept = base64.b64encode(hashlib.sha1(lower["sec-websocket-key"].encode() + WS_GUID).digest())
                writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                             b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
                while chunk := await reader.read(65536):
                    writer.write(chunk)
                    await writer.drain()
                return
            if path.startswith("/quiet"):    # nothing of the request echoed back
                status, extra, body = "200 OK", "Content-Type: text/plain\r\n", b"ok\n"
            elif path.startswith("/redirect"):
                status, extra, body = "302 Found", "Location: https://other.test/landed\r\n", b""
            else:
                status, extra, body = "200 OK", "Content-Type: application/json\r\n", json.dumps(record).encode()
            writer.write(f"HTTP/1.1 {status}\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()
    except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        pass
    finally:
        writer.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("addr")
    ap.add_argument("cert")
    ap.add_argument("key")
    ap.add_argument("log")
    args = ap.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    names: dict[int, str] = {}
    ctx.sni_callback = lambda obj, name, _c: names.__setitem__(id(obj), name or "-")  # type: ignore[assignment,misc]

    async def on_tls(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await serve(r, w, args.log, names.pop(id(w.get_extra_info("ssl_object")), "-"))

    async def on_plain(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await serve(r, w, args.log, "")

    tls = await asyncio.start_server(on_tls, args.addr, 443, ssl=ctx, backlog=1024)
    plain = await asyncio.start_server(on_plain, args.addr, 80, backlog=1024)
    print("ready", flush=True)
    async with tls, plain:
        await asyncio.gather(tls.serve_forever(), plain.serve_forever())


if __name__ == "__main__":
    asyncio.run(main())
