"""lightrpc/wire.py: the bytes of a unary gRPC call over HTTP/2, checked
against h2 (a full HTTP/2 implementation playing the server) and hpack."""
from __future__ import annotations

import struct

import h2.config
import h2.connection
import h2.events
import pytest
from hpack import Decoder, Encoder

from netagent.lightrpc import wire


def server_reading(request: bytes) -> tuple[h2.connection.H2Connection, list]:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    return conn, conn.receive_data(request)


def answer_frames(message: bytes, *, status: str = "0", details: str | None = None) -> list[tuple]:
    """(kind, flags, payload) frames of a normal answer: headers, data, trailers."""
    enc = Encoder()
    trailers = [("grpc-status", status)] + ([("grpc-message", details)] if details else [])
    return [(wire.HEADERS, wire.END_HEADERS, enc.encode([(":status", "200"), ("content-type", "application/grpc")])),
            (wire.DATA, 0, struct.pack(">BI", 0, len(message)) + message),
            (wire.HEADERS, wire.END_HEADERS | wire.END_STREAM, enc.encode(trailers))]


def raw(frames: list[tuple], stream: int = wire.STREAM) -> bytes:
    return b"".join(wire.frame(kind, flags, stream, payload) for kind, flags, payload in frames)


def reader() -> wire.ResponseReader:
    decoder = Decoder()
    return wire.ResponseReader(lambda block: decoder.decode(block))


def test_request_is_a_valid_grpc_call_for_an_http2_server():
    message = b"\x0a\x03abc"
    conn, events = server_reading(wire.request("/netagent.v1.NetAgent/Get", message, 2.5))
    [settings] = [e for e in events if isinstance(e, h2.events.RemoteSettingsChanged)]
    assert settings.changed_settings[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE].new_value == wire.MAX_WINDOW
    assert settings.changed_settings[h2.settings.SettingCodes.ENABLE_PUSH].new_value == 0
    [headers] = [e for e in events if isinstance(e, h2.events.RequestReceived)]
    assert headers.stream_id == 1
    assert [(k.decode(), v.decode()) for k, v in headers.headers] == [
        (":method", "POST"), (":scheme", "http"), (":path", "/netagent.v1.NetAgent/Get"),
        (":authority", "localhost"), ("content-type", "application/grpc"), ("te", "trailers"),
        ("grpc-timeout", "2500m")]
    [data] = [e for e in events if isinstance(e, h2.events.DataReceived)]
    assert data.data == b"\x00\x00\x00\x00\x05" + message
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)
    assert conn.local_flow_control_window(1) == wire.MAX_WINDOW   # what the server may send: stream and connection


def test_a_request_larger_than_a_frame_is_split():
    message = b"x" * 40_000
    _, events = server_reading(wire.request("/p", message, 1))
    body = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert body == struct.pack(">BI", 0, len(message)) + message
    assert sum(isinstance(e, h2.events.DataReceived) for e in events) == 3


def test_hpack_integers_and_literals_decode_with_hpack():
    assert wire.hpack_int(10, 5) == b"\x0a"
    assert wire.hpack_int(1337, 5) == b"\x1f\x9a\x0a"    # RFC 7541 C.1.2
    long_value = "v" * 300                                # a length past the 7-bit prefix
    assert Decoder().decode(wire.hpack_literal("x-name", long_value)) == [("x-name", long_value)]


def test_grpc_timeout_rounds_up_and_keeps_eight_digits():
    assert wire.grpc_timeout(10) == "10000m"
    assert wire.grpc_timeout(0.0001) == "1m"
    assert wire.grpc_timeout(200_000) == "200000S"


def test_an_answer_read_in_one_piece():
    r = reader()
    assert r.feed(raw(answer_frames(b"hello"))) == b""
    assert r.done and r.result() == b"hello"


def test_an_answer_read_one_byte_at_a_time_with_split_frames_and_continuation():
    enc = Encoder()
    block = enc.encode([(":status", "200"), ("content-type", "application/grpc")])
    message = b"m" * 70_000
    body = struct.pack(">BI", 0, len(message)) + message
    frames = [(wire.HEADERS, 0, block[:3]), (wire.CONTINUATION, wire.END_HEADERS, block[3:])]
    frames += [(wire.DATA, 0, body[i:i + 16_384]) for i in range(0, len(body), 16_384)]
    frames += [(wire.HEADERS, wire.END_HEADERS | wire.END_STREAM, enc.encode([("grpc-status", "0")]))]
    data, r = raw(frames), reader()
    for i in range(len(data) - 1):
        r.feed(data[i:i + 1])
        assert not r.done
    r.feed(data[-1:])
    assert r.result() == message


def test_padded_and_prioritised_frames():
    enc = Encoder()
    block = enc.encode([(":status", "200")])
    frames = [(wire.HEADERS, wire.END_HEADERS | wire.PADDED | wire.PRIORITY,
               b"\x02" + b"\x00\x00\x00\x00\x10" + block + b"\x00\x00"),
              (wire.DATA, wire.PADDED, b"\x03" + struct.pack(">BI", 0, 2) + b"ok" + b"\x00\x00\x00"),
              (wire.HEADERS, wire.END_HEADERS | wire.END_STREAM, enc.encode([("grpc-status", "0")]))]
    r = reader()
    r.feed(raw(frames))
    assert r.result() == b"ok"


def test_trailers_only_error_carries_code_name_and_decoded_details():
    block = Encoder().encode([(":status", "200"), ("grpc-status", "5"),
                              ("grpc-message", "sandbox%20%27x%27 is not allocated %E2%9C%93")])
    r = reader()
    r.feed(raw([(wire.HEADERS, wire.END_HEADERS | wire.END_STREAM, block)]))
    with pytest.raises(wire.CallFailure) as exc:
        r.result()
    assert (exc.value.code, exc.value.details) == ("NOT_FOUND", "sandbox 'x' is not allocated \u2713")


def test_an_error_in_trailers_after_headers():
    r = reader()
    r.feed(raw(answer_frames(b"", status="9", details="busy")))
    with pytest.raises(wire.CallFailure) as exc:
        r.result()
    assert (exc.value.code, exc.value.details) == ("FAILED_PRECONDITION", "busy")


def test_settings_and_ping_are_answered_and_acks_are_not():
    r = reader()
    out = r.feed(wire.frame(wire.SETTINGS, 0, 0, struct.pack(">HI", 0x3, 100))
                 + wire.frame(wire.PING, 0, 0, b"12345678")
                 + wire.frame(wire.SETTINGS, wire.ACK, 0)
                 + wire.frame(wire.PING, wire.ACK, 0, b"87654321")
                 + wire.frame(wire.WINDOW_UPDATE, 0, 0, b"\x00\x00\x10\x00"))
    assert out == wire.frame(wire.SETTINGS, wire.ACK, 0) + wire.frame(wire.PING, wire.ACK, 0, b"12345678")
    assert not r.done


def test_rst_stream_fails_the_call():
    r = reader()
    r.feed(wire.frame(wire.RST_STREAM, 0, wire.STREAM, struct.pack(">I", 0x7)))
    with pytest.raises(wire.CallFailure) as exc:
        r.result()
    assert exc.value.code == "UNAVAILABLE"


def test_goaway_before_our_stream_fails_and_after_it_lets_the_answer_finish():
    r = reader()
    r.feed(wire.frame(wire.GOAWAY, 0, 0, struct.pack(">II", 0, 0)))
    with pytest.raises(wire.CallFailure) as exc:
        r.result()
    assert exc.value.code == "UNAVAILABLE" and "GOAWAY" in exc.value.details

    r = reader()
    r.feed(wire.frame(wire.GOAWAY, 0, 0, struct.pack(">II", 1, 0)) + raw(answer_frames(b"done")))
    assert r.result() == b"done"


def test_a_connection_closed_mid_answer_fails():
    r = reader()
    r.feed(raw(answer_frames(b"partial")[:2]))
    r.closed()
    with pytest.raises(wire.CallFailure) as exc:
        r.result()
    assert exc.value.code == "UNAVAILABLE"


def test_http_error_without_grpc_status_maps_as_grpc_does():
    r = reader()
    r.feed(raw([(wire.HEADERS, wire.END_HEADERS | wire.END_STREAM, Encoder().encode([(":status", "404")]))]))
    with pytest.raises(wire.CallFailure) as exc:
        r.result()
    assert exc.value.code == "UNIMPLEMENTED"


def test_a_message_shorter_than_its_prefix_is_refused():
    frames = answer_frames(b"abcdef")
    kind, flags, payload = frames[1]
    frames[1] = (kind, flags, payload[:-2])
    r = reader()
    r.feed(raw(frames))
    with pytest.raises(wire.CallFailure) as exc:
        r.result()
    assert exc.value.code == "INTERNAL"
