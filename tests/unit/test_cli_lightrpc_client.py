"""lightrpc/client.py's socket I/O against servers on a unix socket in the
test's directory: h2 playing a gRPC server (it enforces flow control), one
that never answers (the deadline) and none at all (the CLI's "not running")."""
from __future__ import annotations

import socket
import struct
import threading
import time

import h2.config
import h2.connection
import h2.events
import pytest

from netagent.lightrpc import client as lightrpc


def serve_once(path: str, message: bytes, seen: dict) -> threading.Thread:
    """Answer one call with `message`, a PING sent before the data; record
    what the client did (`seen`)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def run() -> None:
        with listener, listener.accept()[0] as conn_sock:
            conn_sock.settimeout(10)
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
            conn.initiate_connection()
            conn_sock.sendall(conn.data_to_send())
            ended = False
            while not ended:
                for event in conn.receive_data(conn_sock.recv(65536)):
                    if isinstance(event, h2.events.RequestReceived):
                        seen["path"] = dict(event.headers)[b":path"].decode()
                    ended = ended or isinstance(event, h2.events.StreamEnded)
                conn_sock.sendall(conn.data_to_send())
            seen["window"] = conn.local_flow_control_window(1)
            conn.ping(b"pingpong")
            conn.send_headers(1, [(":status", "200"), ("content-type", "application/grpc")])
            body = struct.pack(">BI", 0, len(message)) + message
            step = conn.max_outbound_frame_size
            for i in range(0, len(body), step):
                conn.send_data(1, body[i:i + step])   # raises if the client's window were too small
            conn.send_headers(1, [("grpc-status", "0")], end_stream=True)
            conn_sock.sendall(conn.data_to_send())
            while "ping_acked" not in seen:
                data = conn_sock.recv(65536)
                if not data:
                    break
                if any(isinstance(e, h2.events.PingAckReceived) for e in conn.receive_data(data)):
                    seen["ping_acked"] = True

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_multi_megabyte_answer_flows_without_window_updates_and_ping_is_answered(tmp_path):
    path, seen = str(tmp_path / "a.sock"), {}
    message = bytes(range(256)) * 12_000     # ~3 MB, far past the default 64 KB windows
    thread = serve_once(path, message, seen)
    assert lightrpc.call(path, "/netagent.v1.NetAgent/List", b"", timeout=10) == message
    thread.join(10)
    assert seen["path"] == "/netagent.v1.NetAgent/List"
    assert seen["window"] >= len(message) and seen.get("ping_acked")


def test_a_server_that_never_answers_meets_the_deadline(tmp_path):
    path = str(tmp_path / "silent.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        started = time.monotonic()
        with pytest.raises(lightrpc.RpcError) as exc:
            lightrpc.call(path, "/netagent.v1.NetAgent/GetHostInfo", b"", timeout=0.3)
        assert 0.3 <= time.monotonic() - started < 5
    assert (exc.value.code().name, exc.value.details()) == ("DEADLINE_EXCEEDED", "Deadline Exceeded")


def test_no_server_is_unavailable_worded_as_a_connect_failure(tmp_path):
    with pytest.raises(lightrpc.RpcError) as exc:
        lightrpc.LightClient(str(tmp_path / "none.sock"), timeout=1).host_info()
    assert exc.value.code().name == "UNAVAILABLE" and "failed to connect" in exc.value.details()
