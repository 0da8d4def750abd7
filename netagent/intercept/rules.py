"""Request rules of one sandbox: the model, its validation and the text the
interceptor's Lua action reads. Pure; unit-tested.

A rule matches a domain (exact, or `*.example.com`: one label below it, as a
TLS wildcard certificate does), optionally methods and a path (a prefix, or a
glob when it holds `*`: `*` within a segment, `**` across segments), and ports
(443 and 80 by default; 80 is plain HTTP, every other port TLS). The first rule
of the list that matches a request decides it. A request to a ruled name that no
rule matches is allowed unchanged (the connection policy already admitted it).
"""
from __future__ import annotations

import re
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import InvalidArgument
from ..models import _parse
from ..policy import DOMAIN_RE

PLAIN_PORT = 80
MAX_RULES = 64
MAX_TRANSFORMS = 16
SECRET_REF_RE = re.compile(r"\$\{secret:([^}]*)\}")
SECRET_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")   # an RFC 9110 token
METHOD_RE = re.compile(r"^[A-Z]{1,16}$")
RULE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PATH_RE = re.compile(r"^/[\x21-\x7e]{0,1023}$")
# Never forwarded as set by a rule: the proxy owns the framing of the request.
FORBIDDEN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "upgrade",
                               "te", "trailer", "keep-alive", "proxy-connection"})


def has_control_chars(text: str) -> bool:
    """CR, LF, NUL, tab and every other control character (and DEL)."""
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


class Action(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


class HeaderOp(StrEnum):
    SET = "set"          # add, or overwrite every value of the header
    REPLACE = "replace"  # overwrite only where the request has the header
    REMOVE = "remove"


class Transform(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    op: HeaderOp
    header: str
    value: str = ""

    @field_validator("header")
    @classmethod
    def _header(cls, v: str) -> str:
        if not HEADER_NAME_RE.match(v):
            raise ValueError(f"header name {v!r} is not an HTTP token (1-64 chars)")
        if v.lower() in FORBIDDEN_HEADERS:
            raise ValueError(f"header {v!r} is the proxy's to set, not a rule's")
        return v

    @field_validator("value")
    @classmethod
    def _value(cls, v: str) -> str:
        if has_control_chars(v):
            raise ValueError("a header value may not hold CR, LF or other control characters")
        if len(v) > 4096:
            raise ValueError("header value longer than 4096 chars")
        for name in SECRET_REF_RE.findall(v):
            if not SECRET_NAME_RE.match(name):
                raise ValueError(f"bad secret reference ${{secret:{name}}}")
        return v

    @model_validator(mode="after")
    def _value_needed(self) -> Transform:
        if self.op == HeaderOp.REMOVE and self.value:
            raise ValueError("remove takes no value")
        return self

    @property
    def secrets(self) -> frozenset[str]:
        return frozenset(SECRET_REF_RE.findall(self.value))


class RequestRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    domain: str
    methods: tuple[str, ...] = ()          # () : any method
    path: str = "/"
    ports: tuple[int, ...] = (80, 443)
    action: Action = Action.ALLOW
    transforms: tuple[Transform, ...] = ()
    # Plain HTTP (port 80) carries this rule's secrets only when this is true.
    secrets_over_plain_http: bool = False

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not RULE_ID_RE.match(v):
            raise ValueError(f"rule id {v!r}: 1-64 chars of [A-Za-z0-9_.-]")
        return v

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str) -> str:
        d = v.strip().lower().rstrip(".")
        if not DOMAIN_RE.match(d) or d.replace(".", "").replace("*", "").isdigit():
            raise ValueError(f"domain {v!r} is not a name or *.name")
        return d

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        out = tuple(m.upper() for m in v)
        for m in out:
            if not METHOD_RE.match(m):
                raise ValueError(f"method {m!r} is not an HTTP method")
        return out

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not PATH_RE.match(v):
            raise ValueError(f"path {v!r} must start with / and hold visible ASCII only")
        return v

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or len(v) > 8 or any(not 1 <= p <= 65535 for p in v):
            raise ValueError("ports: 1-8 ports in 1..65535")
        return tuple(sorted(set(v)))

    @model_validator(mode="after")
    def _consistent(self) -> RequestRule:
        if len(self.transforms) > MAX_TRANSFORMS:
            raise ValueError(f"at most {MAX_TRANSFORMS} transforms per rule")
        if self.action == Action.DENY and self.transforms:
            raise ValueError("a deny rule has no transforms")
        return self

    @property
    def secrets(self) -> frozenset[str]:
        return frozenset().union(*(t.secrets for t in self.transforms))


class RuleSet(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: tuple[RequestRule, ...] = Field(default=(), max_length=MAX_RULES)

    @model_validator(mode="after")
    def _unique_ids(self) -> RuleSet:
        ids = [r.id for r in self.rules]
        if len(ids) != len(set(ids)):
            raise ValueError("rule ids must be unique")
        return self

    @classmethod
    def parse(cls, data: RuleSet | dict | list | None) -> RuleSet:
        if isinstance(data, list | tuple):
            data = {"rules": list(data)}
        return _parse(cls, data, "invalid request rules")  # type: ignore[no-any-return]

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(sorted({r.domain for r in self.rules}))

    @property
    def secrets(self) -> frozenset[str]:
        return frozenset().union(*(r.secrets for r in self.rules))

    def ports_of(self, name: str) -> tuple[int, ...]:
        """The intercepted ports of a name (empty: no rule names it)."""
        return tuple(sorted({p for r in self.rules if domain_matches(name, r.domain) for p in r.ports}))


def domain_matches(name: str, domain: str) -> bool:
    """`api.test` matches itself; `*.example.test` one label below example.test."""
    name = name.lower().rstrip(".")
    if domain.startswith("*."):
        head, _, tail = name.partition(".")
        return bool(head) and tail == domain[2:]
    return name == domain


def require_secrets(rules: RuleSet, known: set[str] | frozenset[str]) -> None:
    """Refuse a rule set naming a secret the sandbox does not have."""
    missing = sorted(rules.secrets - set(known))
    if missing:
        raise InvalidArgument(f"request rules reference secrets this sandbox does not have: {', '.join(missing)} "
                              "(set them first with SetSecret)")


def check_secret(name: str, value: str) -> None:
    if not isinstance(name, str) or not SECRET_NAME_RE.match(name):
        raise InvalidArgument("secret name must be 1-64 chars of [A-Za-z0-9_], not starting with a digit")
    if not isinstance(value, str) or not value or len(value) > 4096:
        raise InvalidArgument(f"secret {name}: the value must be 1-4096 chars")
    if has_control_chars(value):
        raise InvalidArgument(f"secret {name}: the value may not hold CR, LF or other control characters")


def lua_glob(path: str) -> str:
    """A glob path as an anchored Lua pattern: `**` any chars, `*` any but '/'."""
    out = []
    i = 0
    while i < len(path):
        if path.startswith("**", i):
            out.append(".*")
            i += 2
        elif path[i] == "*":
            out.append("[^/]*")
            i += 1
        else:
            c = path[i]
            out.append("%" + c if c in "^$()%.[]+-?" else c)
            i += 1
    return "^" + "".join(out) + "$"


def encode_for_lua(sandbox_id: str, rules: RuleSet, secrets: dict[str, str]) -> str:
    """One sandbox's rules and secrets as the interceptor's Lua reads them
    (tab-separated lines; validation forbids tabs and newlines in every field)."""
    lines = [f"S\t{sandbox_id}"]
    for r in rules.rules:
        kind, pattern = ("g", lua_glob(r.path)) if "*" in r.path else ("p", r.path)
        lines.append("\t".join(["R", r.id, r.action.value, r.domain, ",".join(map(str, r.ports)),
                                ",".join(r.methods) or "*", kind, pattern,
                                "1" if r.secrets_over_plain_http else "0"]))
        for t in r.transforms:
            lines.append("\t".join(["T", r.id, t.op.value, t.header, t.value]))
    for name in sorted(rules.secrets):
        lines.append(f"K\t{name}\t{secrets[name]}")
    return "\n".join(lines) + "\n"
