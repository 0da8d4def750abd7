"""Request interception for the agent: each sandbox's rules and secrets, the
host CA, the interceptor process (started with the first ruled sandbox) and
the request records. The agent calls it; it calls back `record` with each
batch of request records (events) and writes the JSON-lines log itself.

Rules are kept in a JSON file (not secret); secrets in the sealed store
(secrets.py). Neither is ever logged; errors name secrets, never values."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

from ..config import Config
from ..core.ops import REQUESTS_READ_TO
from ..errors import FailedPrecondition, InvalidArgument, NotFound
from ..models import LABEL_KEY_RE
from .ca import InterceptCA, write_private
from .control import Interceptor
from .haconfig import InterceptSettings
from .rules import RuleSet, check_secret, require_secrets
from .secrets import SecretStore
from .steering import Steered

log = logging.getLogger("netagent.intercept")


LABEL = "label:"


def label_owner(label: str) -> str:
    """The secret store's owner key of a label ("key=value"), validated."""
    key, sep, value = label.partition("=")
    if not sep or not LABEL_KEY_RE.match(key) or len(value) > 256:
        raise InvalidArgument(f"label must be key=value with a valid label key; got {label!r}")
    return LABEL + label


class InterceptService:
    def __init__(self, config: Config, record: Callable[[list[dict[str, Any]], str], Awaitable[None]],
                 labels_of: Callable[[str], dict[str, str]] = lambda _sid: {}):
        ic = config.intercept
        self.config = config
        self.dir = config.state_dir / "intercept"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.ca = InterceptCA(self.dir / "ca")
        self.secrets = SecretStore(self.dir / "secrets.json", config.state_dir / "keys" / "secrets.key")
        self._rules_path = self.dir / "rules.json"
        self._rules: dict[str, RuleSet] = {}
        if self._rules_path.exists():
            self._rules = {k: RuleSet.parse(v) for k, v in json.loads(self._rules_path.read_text()).items()}
        self._ips: dict[str, str] = {}       # sandbox id -> its source address, while allocated
        self._by_ip: dict[str, str] = {}
        self.settings = InterceptSettings(
            state_dir=self.dir, run_dir=ic.run_dir, ca_bundle=str(ic.ca_bundle), tls_port=ic.tls_port,
            plain_port=ic.plain_port, threads=ic.threads, maxconn=ic.maxconn,
            max_conns_per_source=ic.max_conns_per_sandbox, legacy_guest_tls=ic.legacy_guest_tls)
        self.request_log = ic.request_log or (config.state_dir / "requests.jsonl")
        self._record = record
        self.labels_of = labels_of    # an allocated sandbox's labels (secrets set for a label)
        self.proxy = Interceptor(self.settings, self.ca, self._on_record, netns=config.host_netns,
                                 after_batch=self._flush)
        self._started = False
        self._pending: list[dict[str, Any]] = []
        self._watch_task: asyncio.Task[None] | None = None
        self.steered = Steered()     # which names each steering element is for (intercept_dst)
        self._log_file: Any = None
        self.events_on = ic.request_events

    # ---- lifecycle ----------------------------------------------------------------------

    async def resume(self, allocated: dict[str, str]) -> None:
        """At start: rules of allocated sandboxes go live again; others (released while down) go."""
        for sid in [s for s in self._rules if s not in allocated]:
            self._rules.pop(sid)
            self.secrets.delete(sid)
        for sid in [s for s in self.secrets.sandboxes() if s not in allocated and not s.startswith(LABEL)]:
            self.secrets.delete(sid)
        self._save_rules()
        for sid, ip in allocated.items():
            self._bind(sid, ip)
        self.proxy.tail.recover(self._committed_read_to() if self.events_on else {}, self.request_log)
        if self.proxy.tail.files():   # what a haproxy wrote while no agent ran, first
            await self.proxy.tail.read_new()
            self.proxy.tail.start()
        for sid in allocated:
            if sid in self._rules:
                await self._push(sid)
        self._watch_task = asyncio.create_task(self._watch(), name="netagent-interceptor-watch")

    async def stop(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            await asyncio.gather(self._watch_task, return_exceptions=True)
            self._watch_task = None
        if self._started:
            await self.proxy.stop()
            self._started = False
        await self.proxy.tail.stop()
        await self._flush()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    async def _watch(self, every_s: float = 1.0) -> None:
        """Restart a dead interceptor, with every sandbox's rules pushed again."""
        while True:
            await asyncio.sleep(every_s)
            if self._started:
                try:
                    await self.proxy.ensure_running()
                except Exception:   # noqa: BLE001 - logged; tried again next round
                    log.exception("interceptor: restart failed")

    def _bind(self, sandbox_id: str, ip: str) -> None:
        self._ips[sandbox_id] = ip
        self._by_ip[ip] = sandbox_id

    # ---- rules and secrets --------------------------------------------------------------

    def rules_of(self, sandbox_id: str) -> RuleSet:
        return self._rules.get(sandbox_id, RuleSet())

    def check_rules(self, sandbox_id: str, rules: RuleSet) -> None:
        require_secrets(rules, set(self.effective_names(sandbox_id)))

    def _owners(self, sandbox_id: str) -> list[str]:
        """Where a sandbox's secrets come from, weakest first: its labels' (by key), then its own."""
        labels = self.labels_of(sandbox_id)
        return [label_owner(f"{k}={labels[k]}") for k in sorted(labels)] + [sandbox_id]

    def effective_names(self, sandbox_id: str) -> list[str]:
        return sorted({n for owner in self._owners(sandbox_id) for n in self.secrets.names(owner)})

    def _effective_values(self, sandbox_id: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for owner in self._owners(sandbox_id):
            out.update(self.secrets.values(owner))
        return out

    async def set_label_secret(self, label: str, name: str, value: str) -> list[str]:
        """A secret every sandbox with this label (key=value) gets, unless it has its own of that name."""
        check_secret(name, value)
        owner = label_owner(label)
        self.secrets.set(owner, name, value)
        for sid in self._labelled(label):
            if name in self.rules_of(sid).secrets:
                await self._push(sid)
        return self.secrets.names(owner)

    async def delete_label_secret(self, label: str, name: str) -> bool:
        owner = label_owner(label)
        users = [sid for sid in self._labelled(label) if name in self.rules_of(sid).secrets
                 and name not in self.secrets.names(sid)]
        if users and name in self.secrets.names(owner):
            raise FailedPrecondition(f"secret {name} of label {label} is used by the request rules of "
                                     f"{', '.join(sorted(users))}; change those rules first")
        return self.secrets.delete(owner, name)

    def label_secret_names(self, label: str) -> list[str]:
        return self.secrets.names(label_owner(label))

    def _labelled(self, label: str) -> list[str]:
        key, _, value = label.partition("=")
        return [sid for sid in self._ips if self.labels_of(sid).get(key) == value]

    async def set_rules(self, sandbox_id: str, sandbox_ip: str, rules: RuleSet) -> RuleSet:
        self.check_rules(sandbox_id, rules)
        self._bind(sandbox_id, sandbox_ip)
        if rules.rules:
            self._rules[sandbox_id] = rules
        else:
            self._rules.pop(sandbox_id, None)
        self._save_rules()
        await self._push(sandbox_id)
        return rules

    async def set_secret(self, sandbox_id: str, name: str, value: str) -> list[str]:
        check_secret(name, value)
        self.secrets.set(sandbox_id, name, value)
        if name in self.rules_of(sandbox_id).secrets:
            await self._push(sandbox_id)
        return self.secrets.names(sandbox_id)

    async def delete_secret(self, sandbox_id: str, name: str) -> bool:
        users = [r.id for r in self.rules_of(sandbox_id).rules if name in r.secrets]
        backed = any(name in self.secrets.names(o) for o in self._owners(sandbox_id)[:-1])
        if users and not backed and name in self.secrets.names(sandbox_id):
            raise FailedPrecondition(f"secret {name} is used by request rules {', '.join(users)}; "
                                     "change those rules first")
        return self.secrets.delete(sandbox_id, name)

    def secret_names(self, sandbox_id: str) -> list[str]:
        return self.secrets.names(sandbox_id)

    async def forget(self, sandbox_id: str) -> None:
        """The sandbox was released: its rules and secrets go, from memory and disk."""
        had = self._rules.pop(sandbox_id, None) is not None
        self.secrets.delete(sandbox_id)
        if had:
            self._save_rules()
        ip = self._ips.pop(sandbox_id, None)
        if ip is not None:
            self._by_ip.pop(ip, None)
            self.steered.unsteer(ip, lambda _n, _p: False)   # its elements go with DnsAdmission.forget
            if had and self._started:
                await self.proxy.unload(ip)

    def ruled_ports(self, sandbox_ip: str, name: str) -> tuple[int, ...]:
        """The ports the sandbox at this address intercepts for `name` (DNS steering)."""
        sid = self._by_ip.get(sandbox_ip)
        rules = self._rules.get(sid) if sid else None
        return rules.ports_of(name) if rules else ()

    def sandbox_of(self, sandbox_ip: str) -> str | None:
        return self._by_ip.get(sandbox_ip)

    async def _push(self, sandbox_id: str) -> None:
        ip = self._ips.get(sandbox_id)
        if ip is None:
            raise NotFound(f"sandbox {sandbox_id!r} is not allocated")
        rules = self.rules_of(sandbox_id)
        if not rules.rules:
            if self._started:
                await self.proxy.unload(ip)
            return
        if not self._started:
            await self.proxy.start()
            self._started = True
        values = self._effective_values(sandbox_id)
        await self.proxy.load(ip, sandbox_id, rules, {k: values[k] for k in rules.secrets})

    def _save_rules(self) -> None:
        data = {sid: [r.model_dump(mode="json") for r in rs.rules] for sid, rs in sorted(self._rules.items())}
        write_private(self._rules_path, json.dumps(data, sort_keys=True).encode())

    # ---- records ------------------------------------------------------------------------

    def _on_record(self, record: dict[str, Any]) -> None:
        if record.get("sandbox") in ("", "-", None):
            record["sandbox"] = self._by_ip.get(record.get("src", ""), "")
        if self._log_file is None:
            self._log_file = open(self.request_log, "a", buffering=1 << 16)
        self._log_file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._pending.append(record)

    async def _flush(self, read_to: dict[str, int] | None = None) -> int | None:
        """After each batch the tail read (requestlog.py): the log flushed, then
        the events committed with how far the tail read (`read_to`), before
        the tail saves it. The log's size after it."""
        batch, self._pending = self._pending, []
        if self._log_file is not None:
            self._log_file.flush()
        if batch and self.events_on:
            try:
                await self._record(batch, json.dumps(read_to, sort_keys=True) if read_to else "")
            except Exception:   # noqa: BLE001 - the log line is written; an event lost is logged
                log.exception("interceptor: %d request events not recorded", len(batch))
        return os.fstat(self._log_file.fileno()).st_size if self._log_file is not None else None

    def _committed_read_to(self) -> dict[str, int]:
        """How far the events committed in state.db had read (its own read-only connection)."""
        db = self.config.state_dir / "state.db"
        if not db.exists():
            return {}
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (REQUESTS_READ_TO,)).fetchone()
        except sqlite3.Error:
            return {}
        finally:
            conn.close()
        try:
            return {str(k): int(v) for k, v in json.loads(row[0]).items()} if row else {}
        except (ValueError, AttributeError):
            return {}

