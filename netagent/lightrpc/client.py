"""The CLI's light client: the few unary calls `status`, `ls` and `show` make,
over HTTP/2 on the agent's unix socket, without grpcio (its import is ~80 ms
of the CLI's start-up: docs/cli.md, "Start-up"). The bytes are wire.py's; this
module only moves them. Every other command, and TCP/TLS targets, use
netagent.client.Client, whose errors this one mirrors (`code().name`,
`details()`), so the CLI prints the same messages for both.
"""
from __future__ import annotations

import errno
import os
import socket
import time
from typing import Any

from hpack import Decoder

from ..api import netagent_pb2 as pb
from ..configfile import DEFAULT_SOCKET
from . import wire

_SERVICE = "/netagent.v1.NetAgent/"
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"


class StatusCode:
    """What grpc.StatusCode offers the CLI: a `name`."""

    def __init__(self, name: str):
        self.name = name

    def __eq__(self, other: object) -> bool:
        return getattr(other, "name", None) == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"StatusCode.{self.name}"


class RpcError(Exception):
    """A failed call, shaped like grpc.RpcError's code() and details()."""

    def __init__(self, failure: wire.CallFailure):
        super().__init__(str(failure))
        self._code, self._details = StatusCode(failure.code), failure.details

    def code(self) -> StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def call(socket_path: str, path: str, request: bytes, timeout: float) -> bytes:
    """One unary call on a new connection; RpcError on any failure, including
    the deadline (DEADLINE_EXCEEDED, as grpcio words it)."""
    decoder = Decoder()
    reader = wire.ResponseReader(lambda block: decoder.decode(block))
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            _connect(sock, socket_path, deadline)
            sock.sendall(wire.request(path, request, timeout))
            while not reader.done:
                sock.settimeout(_remaining(deadline))
                data = sock.recv(1 << 20)
                if not data:
                    reader.closed()
                    break
                if answer := reader.feed(data):
                    sock.sendall(answer)
        return reader.result()
    except wire.CallFailure as failure:
        raise RpcError(failure) from None
    except TimeoutError:
        raise RpcError(wire.CallFailure("DEADLINE_EXCEEDED", "Deadline Exceeded")) from None
    except OSError as exc:
        raise RpcError(wire.CallFailure("UNAVAILABLE", f"Socket closed ({exc.strerror or exc})")) from None


def _connect(sock: socket.socket, socket_path: str, deadline: float) -> None:
    """UNAVAILABLE worded as grpcio's connect failure, which the CLI recognises."""
    sock.settimeout(_remaining(deadline))
    try:
        sock.connect(socket_path)
    except (FileNotFoundError, ConnectionRefusedError, PermissionError) as exc:
        reason = os.strerror(exc.errno or errno.ECONNREFUSED)
        raise wire.CallFailure("UNAVAILABLE", "failed to connect to all addresses; last error: "
                                              f"UNKNOWN: unix:{socket_path}: {reason}") from None


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


class LightClient:
    """netagent.client.Client's read calls for the CLI, on a unix socket only."""

    rpc_error = RpcError

    def __init__(self, socket_path: str | None = None, timeout: float = 10.0):
        self.socket_path = socket_path or DEFAULT_SOCKET
        self.timeout = timeout

    def __enter__(self) -> LightClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass    # a connection lives for one call

    def _call(self, method: str, request: Any, answer_type: Any) -> Any:
        return self._call_path(_SERVICE + method, request, answer_type)

    def _call_path(self, path: str, request: Any, answer_type: Any) -> Any:
        raw = call(self.socket_path, path, request.SerializeToString(), self.timeout)
        return answer_type.FromString(raw)

    def host_info(self) -> pb.HostInfo:
        return self._call("GetHostInfo", pb.GetHostInfoRequest(), pb.HostInfo)

    def get(self, sandbox_id: str) -> pb.Sandbox:
        return self._call("Get", pb.GetRequest(sandbox_id=sandbox_id), pb.Sandbox)

    def list(self, labels: dict[str, str] | None = None, state: str = "") -> list[pb.Sandbox]:
        answer = self._call("List", pb.ListRequest(labels=labels or {}, state=state), pb.ListResponse)
        return list(answer.sandboxes)

    def usage(self, sandbox_id: str = "", *, last_reading: bool = False) -> list[pb.SandboxUsage]:
        req = pb.GetUsageRequest(sandbox_id=sandbox_id, last_reading=last_reading)
        return list(self._call("GetUsage", req, pb.GetUsageResponse).usage)

    def health(self, service: str = "") -> str:
        from grpc_health.v1 import health_pb2  # protobuf only: it imports no grpc
        answer = self._call_path(_HEALTH_CHECK, health_pb2.HealthCheckRequest(service=service),
                                 health_pb2.HealthCheckResponse)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
