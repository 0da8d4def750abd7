"""The netagent.v1.Interception gRPC servicer (issue #23): request rules,
secrets (names out, never values), the interception CA. Errors map as in
service.py; an error message names a secret, never its value."""
from __future__ import annotations

from typing import Any

from ..agent import Agent
from ..intercept.rules import RuleSet
from . import netagent_pb2 as pb
from . import netagent_pb2_grpc as pb_grpc
from .service import NetAgentService


def rules_from_proto(rules: Any) -> list[dict[str, Any]]:
    out = []
    for r in rules:
        rule: dict[str, Any] = {"id": r.id, "domain": r.domain, "methods": list(r.methods),
                                "transforms": [{"op": t.op, "header": t.header, "value": t.value}
                                               for t in r.transforms],
                                "secrets_over_plain_http": r.secrets_over_plain_http}
        if r.path:
            rule["path"] = r.path
        if r.ports:
            rule["ports"] = list(r.ports)
        if r.action:
            rule["action"] = r.action
        out.append(rule)
    return out


def rules_to_proto(sandbox_id: str, rules: RuleSet) -> pb.RequestRules:
    return pb.RequestRules(sandbox_id=sandbox_id, rules=[pb.RequestRule(
        id=r.id, domain=r.domain, methods=list(r.methods), path=r.path, ports=list(r.ports), action=r.action.value,
        transforms=[pb.HeaderTransform(op=t.op.value, header=t.header, value=t.value) for t in r.transforms],
        secrets_over_plain_http=r.secrets_over_plain_http) for r in rules.rules])


def request_to_proto(data: dict[str, Any]) -> pb.HttpRequestRecord:
    fields = pb.HttpRequestRecord.DESCRIPTOR.fields_by_name
    return pb.HttpRequestRecord(**{k: v for k, v in data.items() if k in fields and v is not None})


class InterceptionService(pb_grpc.InterceptionServicer):
    def __init__(self, agent: Agent, calls: NetAgentService):
        self.agent = agent
        self._call = calls._call   # the same deadline and error mapping as netagent.v1.NetAgent

    async def SetRequestRules(self, request: pb.SetRequestRulesRequest, context: Any) -> pb.RequestRules:
        async def run() -> pb.RequestRules:
            rules = await self.agent.set_request_rules(request.sandbox_id, rules_from_proto(request.rules))
            return rules_to_proto(request.sandbox_id, rules)
        return await self._call("set_request_rules", context, run)  # type: ignore[no-any-return]

    async def GetRequestRules(self, request: pb.GetRequestRulesRequest, context: Any) -> pb.RequestRules:
        async def run() -> pb.RequestRules:
            return rules_to_proto(request.sandbox_id, await self.agent.get_request_rules(request.sandbox_id))
        return await self._call("get_request_rules", context, run)  # type: ignore[no-any-return]

    async def SetSecret(self, request: pb.SetSecretRequest, context: Any) -> pb.SecretNames:
        async def run() -> pb.SecretNames:
            names = await self.agent.set_secret(request.sandbox_id, request.name, request.value, request.label)
            return pb.SecretNames(sandbox_id=request.sandbox_id, label=request.label, names=names)
        return await self._call("set_secret", context, run)  # type: ignore[no-any-return]

    async def DeleteSecret(self, request: pb.DeleteSecretRequest, context: Any) -> pb.SecretNames:
        async def run() -> pb.SecretNames:
            deleted = await self.agent.delete_secret(request.sandbox_id, request.name, request.label)
            return pb.SecretNames(sandbox_id=request.sandbox_id, label=request.label, deleted=deleted,
                                  names=self.agent.secret_names(request.sandbox_id, request.label))
        return await self._call("delete_secret", context, run)  # type: ignore[no-any-return]

    async def ListSecrets(self, request: pb.ListSecretsRequest, context: Any) -> pb.SecretNames:
        async def run() -> pb.SecretNames:
            return pb.SecretNames(sandbox_id=request.sandbox_id, label=request.label,
                                  names=self.agent.secret_names(request.sandbox_id, request.label))
        return await self._call("list_secrets", context, run)  # type: ignore[no-any-return]

    async def GetInterceptCA(self, request: pb.GetInterceptCARequest, context: Any) -> pb.InterceptCA:
        async def run() -> pb.InterceptCA:
            return pb.InterceptCA(certificate_pem=self.agent.intercept_ca())
        return await self._call("get_intercept_ca", context, run)  # type: ignore[no-any-return]
