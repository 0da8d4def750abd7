"""The netagent.v1 gRPC servicer: validates, calls the core, maps errors.

Each error class maps to one status code (see docs/api.md). A core call runs as
its own task: a caller that disconnects or hits its deadline does not cancel a
half-done operation; a retry with the same id finds the finished result.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import grpc

from .. import __version__
from ..agent import Agent
from ..errors import NetagentError
from . import convert as cv
from . import netagent_pb2 as pb
from . import netagent_pb2_grpc as pb_grpc

log = logging.getLogger("netagent.api")
T = TypeVar("T")


class NetAgentService(pb_grpc.NetAgentServicer):
    def __init__(self, agent: Agent, on_error: Any = None):
        self.agent = agent
        self.on_error = on_error or (lambda op, code: None)
        self.accepting = True

    async def _call(self, op: str, context: grpc.aio.ServicerContext, make: Any) -> T:
        if not self.accepting:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "netagent is shutting down; retry")
        try:
            task: asyncio.Task[T] = asyncio.ensure_future(make())
            remaining = context.time_remaining()
            return await asyncio.wait_for(asyncio.shield(task), remaining)
        except NetagentError as exc:
            self.on_error(op, exc.code)
            await context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
        except TimeoutError:
            self.on_error(op, "DEADLINE_EXCEEDED")
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"{op} did not finish within the deadline; it may still complete: retry")
        raise AssertionError("unreachable")

    async def Allocate(self, request: pb.AllocateRequest, context: Any) -> pb.AllocateResponse:
        async def run() -> pb.AllocateResponse:
            req = cv.parse(cv.AllocateReq, sandbox_id=request.sandbox_id,
                           policy=cv.policy_from_proto(request.policy), labels=dict(request.labels))
            net = await self.agent.allocate(req.sandbox_id, {"policy": req.policy, "labels": req.labels})
            return pb.AllocateResponse(sandbox=cv.sandbox_to_proto(net))
        return await self._call("allocate", context, run)

    async def Release(self, request: pb.ReleaseRequest, context: Any) -> pb.ReleaseResponse:
        async def run() -> pb.ReleaseResponse:
            req = cv.parse(cv.SandboxReq, sandbox_id=request.sandbox_id)
            return pb.ReleaseResponse(released=await self.agent.release(req.sandbox_id))
        return await self._call("release", context, run)

    async def Get(self, request: pb.GetRequest, context: Any) -> pb.Sandbox:
        async def run() -> pb.Sandbox:
            req = cv.parse(cv.SandboxReq, sandbox_id=request.sandbox_id)
            return cv.sandbox_to_proto(await self.agent.get(req.sandbox_id))
        return await self._call("get", context, run)

    async def List(self, request: pb.ListRequest, context: Any) -> pb.ListResponse:
        async def run() -> pb.ListResponse:
            req = cv.parse(cv.ListReq, labels=dict(request.labels), state=request.state)
            if req.state not in ("", "allocated"):
                from ..errors import InvalidArgument
                raise InvalidArgument(f"state: unknown state {req.state!r} (known: allocated)")
            nets = await self.agent.list(req.labels)
            return pb.ListResponse(sandboxes=[cv.sandbox_to_proto(n) for n in nets])
        return await self._call("list", context, run)

    async def UpdatePolicy(self, request: pb.UpdatePolicyRequest, context: Any) -> pb.Sandbox:
        async def run() -> pb.Sandbox:
            req = cv.parse(cv.PolicyReq, sandbox_id=request.sandbox_id, policy=cv.policy_from_proto(request.policy))
            return cv.sandbox_to_proto(await self.agent.update_policy(req.sandbox_id, req.policy))
        return await self._call("update_policy", context, run)

    async def ExposePort(self, request: pb.ExposePortRequest, context: Any) -> pb.ExposePortResponse:
        async def run() -> pb.ExposePortResponse:
            req = cv.parse(cv.ExposeReq, sandbox_id=request.sandbox_id, guest_port=request.guest_port,
                           protocol=cv.protocol_from_proto(request.protocol), host_port=request.host_port or None)
            access = {f: getattr(request, f) for f in ("public", "access_token", "host_mask") if request.HasField(f)}
            if access:   # before the port is exposed, so it is never published without them
                await self.agent.set_port_access(req.sandbox_id, req.guest_port, **access)
            host_port = await self.agent.expose(req.sandbox_id, req.guest_port, req.protocol.value, req.host_port)
            return pb.ExposePortResponse(port=pb.ExposedPort(guest_port=req.guest_port, host_port=host_port,
                                                             protocol=cv.PROTOCOL_TO_PROTO[req.protocol]))
        return await self._call("expose", context, run)

    async def UnexposePort(self, request: pb.UnexposePortRequest, context: Any) -> pb.UnexposePortResponse:
        async def run() -> pb.UnexposePortResponse:
            req = cv.parse(cv.ExposeReq, sandbox_id=request.sandbox_id, guest_port=request.guest_port,
                           protocol=cv.protocol_from_proto(request.protocol))
            removed = await self.agent.unexpose(req.sandbox_id, req.guest_port, req.protocol.value)
            return pb.UnexposePortResponse(removed=removed)
        return await self._call("unexpose", context, run)

    async def GetHostInfo(self, request: pb.GetHostInfoRequest, context: Any) -> pb.HostInfo:
        a = self.agent
        info = a.host_info
        r = a.reachability.status()
        return pb.HostInfo(node_id=a.config.node_id, version=__version__, capacity=a.plan.capacity,
                           allocations=len(a.allocations), free_slots=a.plan.capacity - len(a.allocations),
                           ready_slots=len(a.ready), uplink=info.uplink if info else "",
                           uplink_addresses=info.uplink_addresses if info else [],
                           transit_cidr=str(a.config.transit_cidr), prefix=a.config.prefix,
                           registry=r["registry"], registry_healthy=r["registry_healthy"],
                           registry_error=r["registry_error"],
                           registry_last_success_unix_ms=int(r["registry_last_success"] * 1000),
                           probed_ports=r["probed_ports"], node_address=a.reachability.node_address())

    async def Resync(self, request: pb.ResyncRequest, context: Any) -> pb.ResyncResponse:
        async def run() -> pb.ResyncResponse:
            res = await self.agent.repair()
            return pb.ResyncResponse(ruleset_reloaded=res["ruleset_reloaded"], elements=res["elements"])
        return await self._call("resync", context, run)

    async def ProbePort(self, request: pb.ProbePortRequest, context: Any) -> pb.ProbePortResponse:
        async def run() -> pb.ProbePortResponse:
            timeout = request.timeout_ms / 1000 if request.timeout_ms else None
            res = await self.agent.probe(request.sandbox_id, request.guest_port, timeout)
            return pb.ProbePortResponse(reachable=res["reachable"], outcome=res["outcome"],
                                        rtt_ms=res["rtt_s"] * 1000, host_port=res["host_port"])
        return await self._call("probe", context, run)

    async def WatchEvents(self, request: pb.WatchEventsRequest, context: Any) -> AsyncIterator[pb.Event]:
        try:
            req = cv.parse(cv.WatchReq, after_cursor=request.after_cursor, sandbox_ids=tuple(request.sandbox_ids))
            async for ev in self.agent.events.watch(req.after_cursor, set(req.sandbox_ids) or None):
                msg = pb.Event(cursor=ev.cursor, time_unix_ms=int(ev.ts * 1000), type=cv.EVENT_TYPES[ev.type],
                               sandbox_id=ev.sandbox_id, reachable=bool(ev.data.get("reachable", False)))
                if "sandbox" in ev.data:
                    msg.sandbox.CopyFrom(cv.sandbox_to_proto(ev.data["sandbox"]))
                if "port" in ev.data:
                    msg.port.CopyFrom(cv.port_to_proto(ev.data["port"]))
                if "denied" in ev.data:
                    msg.denied.CopyFrom(pb.DeniedFlow(**ev.data["denied"]))
                yield msg
        except NetagentError as exc:
            self.on_error("watch_events", exc.code)
            await context.abort(getattr(grpc.StatusCode, exc.code), str(exc))


