"""Transport: the unix socket (default) and optional TCP with mutual TLS, plus
the standard health service and server reflection."""
from __future__ import annotations

import contextlib
import grp
import logging
import os
import socket
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..agent import Agent
from ..config import Config
from ..errors import ConfigError
from . import netagent_pb2 as pb
from . import netagent_pb2_grpc as pb_grpc
from .intercept_service import InterceptionService
from .service import NetAgentService

log = logging.getLogger("netagent.api")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["NetAgent"].full_name
INTERCEPTION_NAME = pb.DESCRIPTOR.services_by_name["Interception"].full_name
SOCKET_MODE = 0o660
SERVER_OPTIONS = [("grpc.so_reuseport", 0)]   # tests/bench/grpc_server_ab.py tries others


class ApiServer:
    def __init__(self, agent: Agent, config: Config, on_error: Any = None):
        self.config = config
        self.server = grpc.aio.server(options=SERVER_OPTIONS)
        self.service = NetAgentService(agent, on_error)
        self.health = health.aio.HealthServicer()
        pb_grpc.add_NetAgentServicer_to_server(self.service, self.server)
        pb_grpc.add_InterceptionServicer_to_server(InterceptionService(agent, self.service), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, INTERCEPTION_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        self.tcp_port: int | None = None

    async def start(self) -> None:
        path = str(self.config.api.socket)
        _claim_socket_path(path)
        self.server.add_insecure_port(f"unix:{path}")
        if self.config.api.tcp_address:
            self.tcp_port = self.server.add_secure_port(self.config.api.tcp_address, _mtls_credentials(self.config))
        await self.set_serving(False)
        await self.server.start()
        os.chmod(path, SOCKET_MODE)
        if self.config.api.socket_group:
            try:
                os.chown(path, -1, grp.getgrnam(self.config.api.socket_group).gr_gid)
            except KeyError:
                raise ConfigError(f"api_socket_group: no group named {self.config.api.socket_group!r}") from None
        log.info("API on unix:%s%s", path, f" and {self.config.api.tcp_address} (mTLS)" if self.tcp_port else "")

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting, let in-flight calls finish (up to grace_s), close."""
        await self.set_serving(False)
        self.service.accepting = False
        await self.server.stop(grace_s)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.config.api.socket)


def _claim_socket_path(path: str) -> None:
    """Refuse to start beside a live agent; remove a stale socket."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    if not os.path.exists(path):
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)
            return
    raise ConfigError(f"api_socket: another process is serving on {path}")


def _mtls_credentials(config: Config) -> grpc.ServerCredentials:
    assert config.api.tls_cert and config.api.tls_key and config.api.tls_ca
    try:
        key, cert, ca = (p.read_bytes() for p in (config.api.tls_key, config.api.tls_cert, config.api.tls_ca))
    except OSError as exc:
        raise ConfigError(f"tls: {exc}") from None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
