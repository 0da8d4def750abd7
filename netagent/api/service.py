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
from ..core import ops
from ..errors import NetagentError
from . import convert as cv
from . import netagent_pb2 as pb
from . import netagent_pb2_grpc as pb_grpc
from .status import status_message

log = logging.getLogger("netagent.api")
T = TypeVar("T")


# How long before the caller's deadline the servicer answers DEADLINE_EXCEEDED itself.
DEADLINE_HEAD_START_S = 0.025

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
            if remaining is not None:
                # Answer just before gRPC's own deadline timer, which would otherwise race
                # this abort with a bare "Deadline Exceeded" (and no error metric).
                remaining = max(0.0, remaining - min(DEADLINE_HEAD_START_S, remaining / 10))
            return await asyncio.wait_for(asyncio.shield(task), remaining)
        except NetagentError as exc:
            self.on_error(op, exc.code)
            await context.abort(getattr(grpc.StatusCode, exc.code), status_message(str(exc)))
        except TimeoutError:
            self.on_error(op, "DEADLINE_EXCEEDED")
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"{op} did not finish within the deadline; it may still complete: retry")
        raise AssertionError("unreachable")

    async def Allocate(self, request: pb.AllocateRequest, context: Any) -> pb.AllocateResponse:
        async def run() -> pb.AllocateResponse:
            config = self.agent.config
            op = cv.allocate_op(request, config.egress_addresses, config.egress_by_label)
            rules = None
            if request.request_rules:   # checked before anything is allocated
                from .intercept_service import rules_from_proto
                rules = self.agent.check_request_rules(op.sandbox_id, rules_from_proto(request.request_rules))
            net = await self.agent.run_allocate(op)
            if rules is not None:
                await self.agent.set_request_rules(op.sandbox_id, rules)
            return pb.AllocateResponse(sandbox=cv.sandbox_to_proto(net))
        return await self._call("allocate", context, run)

    async def Release(self, request: pb.ReleaseRequest, context: Any) -> pb.ReleaseResponse:
        async def run() -> pb.ReleaseResponse:
            return pb.ReleaseResponse(released=await self.agent.run_release(cv.release_op(request)))
        return await self._call("release", context, run)

    async def Get(self, request: pb.GetRequest, context: Any) -> pb.Sandbox:
        async def run() -> pb.Sandbox:
            return cv.sandbox_to_proto(await self.agent.get(cv.sandbox_id(request.sandbox_id)))
        return await self._call("get", context, run)

    async def List(self, request: pb.ListRequest, context: Any) -> pb.ListResponse:
        async def run() -> pb.ListResponse:
            req = cv.parse(cv.ListReq, labels=dict(request.labels), state=request.state)
            if req.state not in ("", "allocated"):
                from ..errors import InvalidArgument
                raise InvalidArgument(f"state: unknown state {req.state!r} (known: allocated)")
            agent = self.agent
            records = sorted((rec for rec in agent.inventory.allocations.values()
                              if all(rec.spec.labels.get(k) == v for k, v in req.labels.items())),
                             key=lambda rec: rec.slot)
            return pb.ListResponse(sandboxes=cv.sandboxes_to_proto(agent.plan, agent.config.guest, records,
                                                                   agent.reachability.port_view))
        return await self._call("list", context, run)

    async def UpdatePolicy(self, request: pb.UpdatePolicyRequest, context: Any) -> pb.Sandbox:
        async def run() -> pb.Sandbox:
            return cv.sandbox_to_proto(await self.agent.run_update_policy(cv.update_policy_op(request)))
        return await self._call("update_policy", context, run)

    async def SetLimits(self, request: pb.SetLimitsRequest, context: Any) -> pb.Sandbox:
        async def run() -> pb.Sandbox:
            return cv.sandbox_to_proto(await self.agent.run_set_limits(cv.set_limits_op(request)))
        return await self._call("set_limits", context, run)

    async def SetEgressAddress(self, request: pb.SetEgressAddressRequest, context: Any) -> pb.Sandbox:
        async def run() -> pb.Sandbox:
            op = cv.set_egress_op(request, self.agent.config.egress_addresses)
            return cv.sandbox_to_proto(await self.agent.run_set_egress(op))
        return await self._call("set_egress_address", context, run)

    async def ExposePort(self, request: pb.ExposePortRequest, context: Any) -> pb.ExposePortResponse:
        async def run() -> pb.ExposePortResponse:
            op = cv.expose_op(request, self.agent.config.host_port_range)
            if access := cv.port_access_op(request):   # before the port is exposed: never published without it
                await self.agent.run_port_access(access)
            port = await self.agent.run_expose(op)
            return pb.ExposePortResponse(port=pb.ExposedPort(guest_port=op.guest_port, host_port=port.host_port,
                                                             protocol=cv.PROTOCOL_TO_PROTO[op.protocol]))
        return await self._call("expose", context, run)

    async def SetPaused(self, request: pb.SetPausedRequest, context: Any) -> pb.SetPausedResponse:
        async def run() -> pb.SetPausedResponse:
            op = ops.SetPaused.of(request.sandbox_id, request.paused, request.wake)
            return pb.SetPausedResponse(changed=await self.agent.run_set_paused(op))
        return await self._call("set_paused", context, run)

    async def UnexposePort(self, request: pb.UnexposePortRequest, context: Any) -> pb.UnexposePortResponse:
        async def run() -> pb.UnexposePortResponse:
            return pb.UnexposePortResponse(removed=await self.agent.run_unexpose(cv.unexpose_op(request)))
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
                           probed_ports=r["probed_ports"], node_address=a.reachability.node_address(),
                           host_netns=a.config.host_netns or "", host_port_low=a.config.host_port_range[0],
                           host_port_high=a.config.host_port_range[1], probe_interval_s=a.config.probe.interval_s,
                           probe_timeout_s=a.config.probe.timeout_s, state_dir=str(a.config.state_dir.absolute()))

    async def Resync(self, request: pb.ResyncRequest, context: Any) -> pb.ResyncResponse:
        async def run() -> pb.ResyncResponse:
            res = await self.agent.repair()
            return pb.ResyncResponse(ruleset_reloaded=res["ruleset_reloaded"], elements=res["elements"],
                                     slots_repaired=res.get("slots_repaired", 0),
                                     slots_quarantined=res.get("slots_quarantined", 0))
        return await self._call("resync", context, run)

    async def GetUsage(self, request: pb.GetUsageRequest, context: Any) -> pb.GetUsageResponse:
        async def run() -> pb.GetUsageResponse:
            if request.last_reading:   # no kernel I/O (netagent ls)
                totals, read_at = self.agent.last_usage(request.sandbox_id or None)
            else:
                totals = await self.agent.usage(request.sandbox_id or None)
                read_at = self.agent.last_usage()[1]
            return pb.GetUsageResponse(usage=[cv.usage_to_proto(sid, c.as_dict()) for sid, c in sorted(totals.items())],
                                       read_unix_ms=int(read_at * 1000))
        return await self._call("get_usage", context, run)

    async def ListFlows(self, request: pb.ListFlowsRequest, context: Any) -> pb.ListFlowsResponse:
        async def run() -> pb.ListFlowsResponse:
            req = cv.parse(cv.ListFlowsReq, sandbox_id=request.sandbox_id, since_unix_ms=request.since_unix_ms,
                           until_unix_ms=request.until_unix_ms, limit=request.limit)
            limit = req.limit or cv.FLOWS_LIMIT_DEFAULT
            found = await self.agent.flows.query(req.sandbox_id, req.since_unix_ms / 1000,
                                                 req.until_unix_ms / 1000 or None, limit + 1)
            return pb.ListFlowsResponse(flows=[cv.flow_to_proto(r) for r in found[:limit]],
                                        truncated=len(found) > limit)
        return await self._call("list_flows", context, run)

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
                if "slot" in ev.data:
                    msg.slot.CopyFrom(pb.SlotIncident(**ev.data["slot"]))
                msg.verdicts.extend(pb.DestinationVerdicts(**v) for v in ev.data.get("verdicts", ()))
                if "usage" in ev.data:
                    msg.usage.CopyFrom(cv.usage_to_proto(ev.sandbox_id, ev.data["usage"]))
                if "request" in ev.data:
                    from .intercept_service import request_to_proto
                    msg.request.CopyFrom(request_to_proto(ev.data["request"]))
                yield msg
        except NetagentError as exc:
            self.on_error("watch_events", exc.code)
            await context.abort(getattr(grpc.StatusCode, exc.code), status_message(str(exc)))


