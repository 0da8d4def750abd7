"""The core API of request interception (issue #23): rules, secrets, the CA,
request records, and the DNS hook that steers ruled names' addresses to the
interceptor. A mixin of `agent.Agent` beside CoreApi; the work is in
netagent/intercept/service.py. Secret values go in, never out: every call
returns names."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..errors import FailedPrecondition
from ..firewall import elements as el
from ..firewall import names
from ..intercept.rules import RuleSet
from ..intercept.steering import policy_permits, steer_keys
from ..models import validate_sandbox_id
from . import ops
from .planner import require

if TYPE_CHECKING:
    from ..addressing import AddressPlan
    from ..config import Config
    from ..firewall.driver import FirewallDriver
    from ..intercept.service import InterceptService
    from .admission import DnsAdmission
    from .inventory import Inventory


class InterceptApi:
    config: Config
    plan: AddressPlan
    inventory: Inventory
    admission: DnsAdmission
    intercept: InterceptService | None
    _submit: Callable[[ops.Operation], Awaitable[Any]]
    _on_host_fw: Callable[[Callable[[FirewallDriver], None]], Awaitable[None]]

    def _interception(self) -> InterceptService:
        if self.intercept is None:
            raise FailedPrecondition("request interception is off on this host (config intercept.enabled)")
        return self.intercept

    def _ip_of(self, sandbox_id: str) -> str:
        return self.plan.sandbox_ip_text(require(self.inventory, sandbox_id).slot)

    async def set_request_rules(self, sandbox_id: str, rules: RuleSet | list[Any] | dict[str, Any] | None) -> RuleSet:
        """Replace the sandbox's request rules (empty: none). Refused, with nothing
        changed, when a rule names a secret the sandbox does not have."""
        svc = self._interception()
        sid = validate_sandbox_id(sandbox_id)
        parsed = RuleSet.parse(rules)
        ip = self._ip_of(sid)
        done = await svc.set_rules(sid, ip, parsed)
        # addresses steered only for names no rule names now go back to the kernel at once
        if stale := svc.steered.unsteer(ip, lambda name, port: port in parsed.ports_of(name)):
            await self._on_host_fw(lambda fw: fw.apply(el.delete([el.Element(names.INTERCEPT_DST, k)
                                                                   for k in stale])))
        return done

    async def get_request_rules(self, sandbox_id: str) -> RuleSet:
        sid = validate_sandbox_id(sandbox_id)
        require(self.inventory, sid)
        return self._interception().rules_of(sid)

    def check_request_rules(self, sandbox_id: str, rules: RuleSet | list[Any] | dict[str, Any] | None) -> RuleSet:
        """Validate before an Allocate that carries rules (no side effect)."""
        parsed = RuleSet.parse(rules)
        if parsed.rules:
            self._interception().check_rules(validate_sandbox_id(sandbox_id), parsed)
        return parsed

    async def set_secret(self, sandbox_id: str, name: str, value: str, label: str = "") -> list[str]:
        """Set or replace one secret of a sandbox (it need not be allocated yet), or
        (sandbox_id "" and label "key=value") of every sandbox with that label.
        Returns the owner's names."""
        svc = self._interception()
        if label and not sandbox_id:
            return await svc.set_label_secret(label, name, value)
        return await svc.set_secret(validate_sandbox_id(sandbox_id), name, value)

    async def delete_secret(self, sandbox_id: str, name: str, label: str = "") -> bool:
        svc = self._interception()
        if label and not sandbox_id:
            return await svc.delete_label_secret(label, name)
        return await svc.delete_secret(validate_sandbox_id(sandbox_id), name)

    def secret_names(self, sandbox_id: str, label: str = "") -> list[str]:
        svc = self._interception()
        if label and not sandbox_id:
            return svc.label_secret_names(label)
        return svc.secret_names(validate_sandbox_id(sandbox_id))

    def _labels_of(self, sandbox_id: str) -> dict[str, str]:
        rec = self.inventory.allocations.get(sandbox_id)
        return dict(rec.spec.labels) if rec else {}

    def intercept_ca(self) -> str:
        return self._interception().ca.cert_pem

    async def record_requests(self, records: list[dict[str, Any]], read_to: str = "") -> None:
        await self._submit(ops.RecordRequests(tuple(records), read_to))

    async def _steer(self, sandbox_ip: str, name: str, answers: list[tuple[str, int]], admitted: bool) -> None:
        """DNS hook: the answered addresses of a ruled name, where the policy lets
        the flow through, go to the interceptor for the answer's TTL."""
        if self.intercept is None:
            return
        ports = self.intercept.ruled_ports(sandbox_ip, name)
        policy = self.admission.policy_of(sandbox_ip)
        if not ports or policy is None:
            return
        cfg = self.config
        keys = steer_keys(sandbox_ip, answers, ports, lambda a, p: policy_permits(
            policy, admitted, a, p, cfg.always_deny, cfg.always_allow))
        if keys:
            self.intercept.steered.note(name, keys)
            await self._on_host_fw(lambda fw: fw.admit(names.INTERCEPT_DST, keys))

    def _is_ruled(self, sandbox_ip: str, name: str) -> bool:
        return self.intercept is not None and bool(self.intercept.ruled_ports(sandbox_ip, name))
