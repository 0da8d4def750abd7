"""A small synchronous client for netagent.v1 (used by the CLI and the tests)."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .api import netagent_pb2 as pb
from .api import netagent_pb2_grpc as pb_grpc
from .configfile import DEFAULT_SOCKET

PROTOCOLS = {"tcp": pb.PROTOCOL_TCP, "udp": pb.PROTOCOL_UDP}


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path | None = None
    key: Path | None = None


class Client:
    rpc_error = grpc.RpcError   # what a failed call raises (the CLI catches it; lightrpc has its own)

    def __init__(self, target: str | None = None, *, socket_path: str | None = None,
                 tls: TlsFiles | None = None, timeout: float = 10.0, server_name: str | None = None):
        self.target = target or f"unix://{socket_path or DEFAULT_SOCKET}"
        self.timeout = timeout
        if tls:
            creds = grpc.ssl_channel_credentials(
                root_certificates=tls.ca.read_bytes(),
                private_key=tls.key.read_bytes() if tls.key else None,
                certificate_chain=tls.cert.read_bytes() if tls.cert else None)
            options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
            self.channel = grpc.secure_channel(self.target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(self.target)
        self.stub = pb_grpc.NetAgentStub(self.channel)
        self.interception = pb_grpc.InterceptionStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def allocate(self, sandbox_id: str, *, internet: bool | None = None, labels: dict[str, str] | None = None,
                 allow_out: list[str] | None = None, deny_out: list[str] | None = None,
                 timeout: float | None = None, egress_address: str = "",
                 request_rules: list[dict] | None = None) -> pb.Sandbox:
        req = pb.AllocateRequest(sandbox_id=sandbox_id, labels=labels or {},
                                 policy=_policy(internet, allow_out, deny_out), egress_address=egress_address,
                                 request_rules=[_rule(r) for r in request_rules or ()])
        return self.stub.Allocate(req, timeout=timeout or self.timeout).sandbox

    def release(self, sandbox_id: str) -> bool:
        return self.stub.Release(pb.ReleaseRequest(sandbox_id=sandbox_id), timeout=self.timeout).released

    def get(self, sandbox_id: str) -> pb.Sandbox:
        return self.stub.Get(pb.GetRequest(sandbox_id=sandbox_id), timeout=self.timeout)

    def list(self, labels: dict[str, str] | None = None, state: str = "") -> list[pb.Sandbox]:
        return list(self.stub.List(pb.ListRequest(labels=labels or {}, state=state), timeout=self.timeout).sandboxes)

    def update_policy(self, sandbox_id: str, *, internet: bool | None = None, allow_out: list[str] | None = None,
                      deny_out: list[str] | None = None) -> pb.Sandbox:
        req = pb.UpdatePolicyRequest(sandbox_id=sandbox_id, policy=_policy(internet, allow_out, deny_out))
        return self.stub.UpdatePolicy(req, timeout=self.timeout)

    def expose(self, sandbox_id: str, guest_port: int, protocol: str = "tcp", host_port: int = 0, *,
               public: bool | None = None, access_token: str | None = None,
               host_mask: str | None = None, mode: str | None = None) -> pb.ExposedPort:
        """Also sets the port's edge access; None leaves a field as it is (docs/edge.md)."""
        access = {k: v for k, v in (("public", public), ("access_token", access_token), ("host_mask", host_mask),
                                    ("mode", mode)) if v is not None}
        req = pb.ExposePortRequest(sandbox_id=sandbox_id, guest_port=guest_port,
                                   protocol=PROTOCOLS.get(protocol, 99), host_port=host_port, **access)
        return self.stub.ExposePort(req, timeout=self.timeout).port

    def unexpose(self, sandbox_id: str, guest_port: int, protocol: str = "tcp") -> bool:
        req = pb.UnexposePortRequest(sandbox_id=sandbox_id, guest_port=guest_port,
                                     protocol=PROTOCOLS.get(protocol, 99))
        return self.stub.UnexposePort(req, timeout=self.timeout).removed

    def resync(self) -> pb.ResyncResponse:
        return self.stub.Resync(pb.ResyncRequest(), timeout=self.timeout)

    def probe(self, sandbox_id: str, guest_port: int, timeout_ms: int = 0) -> pb.ProbePortResponse:
        req = pb.ProbePortRequest(sandbox_id=sandbox_id, guest_port=guest_port, timeout_ms=timeout_ms)
        return self.stub.ProbePort(req, timeout=self.timeout)

    def flows(self, sandbox_id: str, *, since_unix_ms: int = 0, until_unix_ms: int = 0,
              limit: int = 0) -> pb.ListFlowsResponse:
        """The sandbox's connections that ended in the range, oldest first (docs/api.md)."""
        req = pb.ListFlowsRequest(sandbox_id=sandbox_id, since_unix_ms=since_unix_ms, until_unix_ms=until_unix_ms,
                                  limit=limit)
        return self.stub.ListFlows(req, timeout=self.timeout)

    def usage(self, sandbox_id: str = "", *, last_reading: bool = False) -> list[pb.SandboxUsage]:
        """One sandbox's usage, or every allocated sandbox's (empty id): read now,
        or as of the agent's last periodic reading (no kernel I/O; ls)."""
        req = pb.GetUsageRequest(sandbox_id=sandbox_id, last_reading=last_reading)
        return list(self.stub.GetUsage(req, timeout=self.timeout).usage)

    def set_limits(self, sandbox_id: str, egress_bps: int = 0, ingress_bps: int = 0, burst_bytes: int = 0,
                   egress_pps: int = 0, ingress_pps: int = 0, burst_packets: int = 0) -> pb.Sandbox:
        """New bandwidth and packet-rate limits, all of them (0: unlimited; a burst of 0: automatic)."""
        limits = pb.Limits(egress_bps=egress_bps, ingress_bps=ingress_bps, burst_bytes=burst_bytes,
                           egress_pps=egress_pps, ingress_pps=ingress_pps, burst_packets=burst_packets)
        return self.stub.SetLimits(pb.SetLimitsRequest(sandbox_id=sandbox_id, limits=limits), timeout=self.timeout)

    def set_paused(self, sandbox_id: str, paused: bool, wake: bool = False) -> bool:
        """The sandbox's VM is paused (wake: edges resume it on a request) or running again."""
        req = pb.SetPausedRequest(sandbox_id=sandbox_id, paused=paused, wake=wake)
        return self.stub.SetPaused(req, timeout=self.timeout).changed

    # ---- request interception (issue #23) ----

    def set_request_rules(self, sandbox_id: str, rules: list[dict]) -> pb.RequestRules:
        """Rules as dicts (docs/api.md): id, domain, methods, path, ports, action, transforms, ..."""
        return self.interception.SetRequestRules(pb.SetRequestRulesRequest(
            sandbox_id=sandbox_id, rules=[_rule(r) for r in rules]), timeout=self.timeout)

    def get_request_rules(self, sandbox_id: str) -> pb.RequestRules:
        return self.interception.GetRequestRules(pb.GetRequestRulesRequest(sandbox_id=sandbox_id),
                                                 timeout=self.timeout)

    def set_secret(self, sandbox_id: str, name: str, value: str, label: str = "") -> list[str]:
        """A sandbox's secret, or (sandbox_id "" and label "key=value") one for every sandbox with that label."""
        req = pb.SetSecretRequest(sandbox_id=sandbox_id, name=name, value=value, label=label)
        return list(self.interception.SetSecret(req, timeout=self.timeout).names)

    def delete_secret(self, sandbox_id: str, name: str, label: str = "") -> bool:
        req = pb.DeleteSecretRequest(sandbox_id=sandbox_id, name=name, label=label)
        return self.interception.DeleteSecret(req, timeout=self.timeout).deleted

    def list_secrets(self, sandbox_id: str, label: str = "") -> list[str]:
        req = pb.ListSecretsRequest(sandbox_id=sandbox_id, label=label)
        return list(self.interception.ListSecrets(req, timeout=self.timeout).names)

    def intercept_ca(self) -> str:
        return self.interception.GetInterceptCA(pb.GetInterceptCARequest(), timeout=self.timeout).certificate_pem

    def set_egress_address(self, sandbox_id: str, address: str = "") -> pb.Sandbox:
        """Another SNAT source for the sandbox ("": the uplink's address)."""
        req = pb.SetEgressAddressRequest(sandbox_id=sandbox_id, egress_address=address)
        return self.stub.SetEgressAddress(req, timeout=self.timeout)

    def host_info(self) -> pb.HostInfo:
        return self.stub.GetHostInfo(pb.GetHostInfoRequest(), timeout=self.timeout)

    def watch_events(self, after_cursor: int = 0, sandbox_ids: list[str] | None = None,
                     timeout: float | None = None) -> Iterator[pb.Event]:
        req = pb.WatchEventsRequest(after_cursor=after_cursor, sandbox_ids=sandbox_ids or [])
        return self.stub.WatchEvents(req, timeout=timeout)

    def health(self, service: str = "") -> str:
        stub = health_pb2_grpc.HealthStub(self.channel)
        resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def _policy(internet: bool | None, allow_out: list[str] | None, deny_out: list[str] | None) -> pb.EgressPolicy:
    policy = pb.EgressPolicy(allow_out=allow_out or [], deny_out=deny_out or [])
    if internet is not None:
        policy.internet = internet
    return policy


def _rule(rule: dict) -> pb.RequestRule:
    r = dict(rule)
    r["transforms"] = [pb.HeaderTransform(**t) for t in r.get("transforms", ())]
    return pb.RequestRule(**r)
