from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Protocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTOCOL_UNSPECIFIED: _ClassVar[Protocol]
    PROTOCOL_TCP: _ClassVar[Protocol]
    PROTOCOL_UDP: _ClassVar[Protocol]

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_ALLOCATED: _ClassVar[EventType]
    EVENT_TYPE_RELEASED: _ClassVar[EventType]
    EVENT_TYPE_POLICY_UPDATED: _ClassVar[EventType]
    EVENT_TYPE_PORT_EXPOSED: _ClassVar[EventType]
    EVENT_TYPE_PORT_UNEXPOSED: _ClassVar[EventType]
    EVENT_TYPE_PORT_REACHABILITY: _ClassVar[EventType]
    EVENT_TYPE_FLOW_DENIED: _ClassVar[EventType]
    EVENT_TYPE_SLOT_REPAIRED: _ClassVar[EventType]
    EVENT_TYPE_TAP_LOST: _ClassVar[EventType]
    EVENT_TYPE_SLOT_QUARANTINED: _ClassVar[EventType]
    EVENT_TYPE_FIRST_PAYLOAD_VERDICTS: _ClassVar[EventType]
    EVENT_TYPE_USAGE_FINAL: _ClassVar[EventType]
    EVENT_TYPE_HTTP_REQUEST: _ClassVar[EventType]
PROTOCOL_UNSPECIFIED: Protocol
PROTOCOL_TCP: Protocol
PROTOCOL_UDP: Protocol
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_ALLOCATED: EventType
EVENT_TYPE_RELEASED: EventType
EVENT_TYPE_POLICY_UPDATED: EventType
EVENT_TYPE_PORT_EXPOSED: EventType
EVENT_TYPE_PORT_UNEXPOSED: EventType
EVENT_TYPE_PORT_REACHABILITY: EventType
EVENT_TYPE_FLOW_DENIED: EventType
EVENT_TYPE_SLOT_REPAIRED: EventType
EVENT_TYPE_TAP_LOST: EventType
EVENT_TYPE_SLOT_QUARANTINED: EventType
EVENT_TYPE_FIRST_PAYLOAD_VERDICTS: EventType
EVENT_TYPE_USAGE_FINAL: EventType
EVENT_TYPE_HTTP_REQUEST: EventType

class EgressPolicy(_message.Message):
    __slots__ = ("internet", "allow_out", "deny_out")
    INTERNET_FIELD_NUMBER: _ClassVar[int]
    ALLOW_OUT_FIELD_NUMBER: _ClassVar[int]
    DENY_OUT_FIELD_NUMBER: _ClassVar[int]
    internet: bool
    allow_out: _containers.RepeatedScalarFieldContainer[str]
    deny_out: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, internet: _Optional[bool] = ..., allow_out: _Optional[_Iterable[str]] = ..., deny_out: _Optional[_Iterable[str]] = ...) -> None: ...

class Network(_message.Message):
    __slots__ = ("netns", "netns_path", "tap", "guest_ip", "guest_prefixlen", "guest_netmask", "gateway_ip", "guest_mac", "mtu", "sandbox_ip", "host_veth", "boot_ip_arg", "slot")
    NETNS_FIELD_NUMBER: _ClassVar[int]
    NETNS_PATH_FIELD_NUMBER: _ClassVar[int]
    TAP_FIELD_NUMBER: _ClassVar[int]
    GUEST_IP_FIELD_NUMBER: _ClassVar[int]
    GUEST_PREFIXLEN_FIELD_NUMBER: _ClassVar[int]
    GUEST_NETMASK_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_IP_FIELD_NUMBER: _ClassVar[int]
    GUEST_MAC_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_IP_FIELD_NUMBER: _ClassVar[int]
    HOST_VETH_FIELD_NUMBER: _ClassVar[int]
    BOOT_IP_ARG_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    netns: str
    netns_path: str
    tap: str
    guest_ip: str
    guest_prefixlen: int
    guest_netmask: str
    gateway_ip: str
    guest_mac: str
    mtu: int
    sandbox_ip: str
    host_veth: str
    boot_ip_arg: str
    slot: int
    def __init__(self, netns: _Optional[str] = ..., netns_path: _Optional[str] = ..., tap: _Optional[str] = ..., guest_ip: _Optional[str] = ..., guest_prefixlen: _Optional[int] = ..., guest_netmask: _Optional[str] = ..., gateway_ip: _Optional[str] = ..., guest_mac: _Optional[str] = ..., mtu: _Optional[int] = ..., sandbox_ip: _Optional[str] = ..., host_veth: _Optional[str] = ..., boot_ip_arg: _Optional[str] = ..., slot: _Optional[int] = ...) -> None: ...

class ExposedPort(_message.Message):
    __slots__ = ("guest_port", "protocol", "host_port", "reachable", "changed_unix_ms", "checked_unix_ms")
    GUEST_PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    HOST_PORT_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    CHANGED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    CHECKED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    guest_port: int
    protocol: Protocol
    host_port: int
    reachable: bool
    changed_unix_ms: int
    checked_unix_ms: int
    def __init__(self, guest_port: _Optional[int] = ..., protocol: _Optional[_Union[Protocol, str]] = ..., host_port: _Optional[int] = ..., reachable: _Optional[bool] = ..., changed_unix_ms: _Optional[int] = ..., checked_unix_ms: _Optional[int] = ...) -> None: ...

class Sandbox(_message.Message):
    __slots__ = ("sandbox_id", "network", "policy", "labels", "ports", "state", "created_unix_ms", "egress_address", "limits")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    EGRESS_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    network: Network
    policy: EgressPolicy
    labels: _containers.ScalarMap[str, str]
    ports: _containers.RepeatedCompositeFieldContainer[ExposedPort]
    state: str
    created_unix_ms: int
    egress_address: str
    limits: Limits
    def __init__(self, sandbox_id: _Optional[str] = ..., network: _Optional[_Union[Network, _Mapping]] = ..., policy: _Optional[_Union[EgressPolicy, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., ports: _Optional[_Iterable[_Union[ExposedPort, _Mapping]]] = ..., state: _Optional[str] = ..., created_unix_ms: _Optional[int] = ..., egress_address: _Optional[str] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ...) -> None: ...

class AllocateRequest(_message.Message):
    __slots__ = ("sandbox_id", "policy", "labels", "egress_address", "limits", "request_rules")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    EGRESS_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_RULES_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    policy: EgressPolicy
    labels: _containers.ScalarMap[str, str]
    egress_address: str
    limits: Limits
    request_rules: _containers.RepeatedCompositeFieldContainer[RequestRule]
    def __init__(self, sandbox_id: _Optional[str] = ..., policy: _Optional[_Union[EgressPolicy, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., egress_address: _Optional[str] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., request_rules: _Optional[_Iterable[_Union[RequestRule, _Mapping]]] = ...) -> None: ...

class AllocateResponse(_message.Message):
    __slots__ = ("sandbox",)
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    sandbox: Sandbox
    def __init__(self, sandbox: _Optional[_Union[Sandbox, _Mapping]] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("sandbox_id",)
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    def __init__(self, sandbox_id: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("sandbox_id",)
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    def __init__(self, sandbox_id: _Optional[str] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("labels", "state")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LABELS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.ScalarMap[str, str]
    state: str
    def __init__(self, labels: _Optional[_Mapping[str, str]] = ..., state: _Optional[str] = ...) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("sandboxes",)
    SANDBOXES_FIELD_NUMBER: _ClassVar[int]
    sandboxes: _containers.RepeatedCompositeFieldContainer[Sandbox]
    def __init__(self, sandboxes: _Optional[_Iterable[_Union[Sandbox, _Mapping]]] = ...) -> None: ...

class UpdatePolicyRequest(_message.Message):
    __slots__ = ("sandbox_id", "policy")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    policy: EgressPolicy
    def __init__(self, sandbox_id: _Optional[str] = ..., policy: _Optional[_Union[EgressPolicy, _Mapping]] = ...) -> None: ...

class ExposePortRequest(_message.Message):
    __slots__ = ("sandbox_id", "guest_port", "protocol", "host_port", "public", "access_token", "host_mask", "mode")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    GUEST_PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    HOST_PORT_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_FIELD_NUMBER: _ClassVar[int]
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    HOST_MASK_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    guest_port: int
    protocol: Protocol
    host_port: int
    public: bool
    access_token: str
    host_mask: str
    mode: str
    def __init__(self, sandbox_id: _Optional[str] = ..., guest_port: _Optional[int] = ..., protocol: _Optional[_Union[Protocol, str]] = ..., host_port: _Optional[int] = ..., public: _Optional[bool] = ..., access_token: _Optional[str] = ..., host_mask: _Optional[str] = ..., mode: _Optional[str] = ...) -> None: ...

class ExposePortResponse(_message.Message):
    __slots__ = ("port",)
    PORT_FIELD_NUMBER: _ClassVar[int]
    port: ExposedPort
    def __init__(self, port: _Optional[_Union[ExposedPort, _Mapping]] = ...) -> None: ...

class UnexposePortRequest(_message.Message):
    __slots__ = ("sandbox_id", "guest_port", "protocol")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    GUEST_PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    guest_port: int
    protocol: Protocol
    def __init__(self, sandbox_id: _Optional[str] = ..., guest_port: _Optional[int] = ..., protocol: _Optional[_Union[Protocol, str]] = ...) -> None: ...

class UnexposePortResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    def __init__(self, removed: _Optional[bool] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("after_cursor", "sandbox_ids")
    AFTER_CURSOR_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_IDS_FIELD_NUMBER: _ClassVar[int]
    after_cursor: int
    sandbox_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, after_cursor: _Optional[int] = ..., sandbox_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeniedFlow(_message.Message):
    __slots__ = ("reason", "destination", "protocol", "port")
    REASON_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    reason: str
    destination: str
    protocol: str
    port: int
    def __init__(self, reason: _Optional[str] = ..., destination: _Optional[str] = ..., protocol: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("cursor", "time_unix_ms", "type", "sandbox_id", "sandbox", "port", "reachable", "denied", "slot", "verdicts", "usage", "request")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    DENIED_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    VERDICTS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    cursor: int
    time_unix_ms: int
    type: EventType
    sandbox_id: str
    sandbox: Sandbox
    port: ExposedPort
    reachable: bool
    denied: DeniedFlow
    slot: SlotIncident
    verdicts: _containers.RepeatedCompositeFieldContainer[DestinationVerdicts]
    usage: SandboxUsage
    request: HttpRequestRecord
    def __init__(self, cursor: _Optional[int] = ..., time_unix_ms: _Optional[int] = ..., type: _Optional[_Union[EventType, str]] = ..., sandbox_id: _Optional[str] = ..., sandbox: _Optional[_Union[Sandbox, _Mapping]] = ..., port: _Optional[_Union[ExposedPort, _Mapping]] = ..., reachable: _Optional[bool] = ..., denied: _Optional[_Union[DeniedFlow, _Mapping]] = ..., slot: _Optional[_Union[SlotIncident, _Mapping]] = ..., verdicts: _Optional[_Iterable[_Union[DestinationVerdicts, _Mapping]]] = ..., usage: _Optional[_Union[SandboxUsage, _Mapping]] = ..., request: _Optional[_Union[HttpRequestRecord, _Mapping]] = ...) -> None: ...

class DestinationVerdicts(_message.Message):
    __slots__ = ("destination", "reason", "allowed", "denied")
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    DENIED_FIELD_NUMBER: _ClassVar[int]
    destination: str
    reason: str
    allowed: int
    denied: int
    def __init__(self, destination: _Optional[str] = ..., reason: _Optional[str] = ..., allowed: _Optional[int] = ..., denied: _Optional[int] = ...) -> None: ...

class SlotIncident(_message.Message):
    __slots__ = ("index", "fixed")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    FIXED_FIELD_NUMBER: _ClassVar[int]
    index: int
    fixed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, index: _Optional[int] = ..., fixed: _Optional[_Iterable[str]] = ...) -> None: ...

class GetHostInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HostInfo(_message.Message):
    __slots__ = ("node_id", "version", "capacity", "allocations", "free_slots", "ready_slots", "uplink", "uplink_addresses", "transit_cidr", "prefix", "registry", "registry_healthy", "registry_error", "registry_last_success_unix_ms", "probed_ports", "node_address", "host_netns", "host_port_low", "host_port_high", "probe_interval_s", "probe_timeout_s", "state_dir")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    ALLOCATIONS_FIELD_NUMBER: _ClassVar[int]
    FREE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    READY_SLOTS_FIELD_NUMBER: _ClassVar[int]
    UPLINK_FIELD_NUMBER: _ClassVar[int]
    UPLINK_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    TRANSIT_CIDR_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_HEALTHY_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_ERROR_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_LAST_SUCCESS_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    PROBED_PORTS_FIELD_NUMBER: _ClassVar[int]
    NODE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HOST_NETNS_FIELD_NUMBER: _ClassVar[int]
    HOST_PORT_LOW_FIELD_NUMBER: _ClassVar[int]
    HOST_PORT_HIGH_FIELD_NUMBER: _ClassVar[int]
    PROBE_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    PROBE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    STATE_DIR_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    version: str
    capacity: int
    allocations: int
    free_slots: int
    ready_slots: int
    uplink: str
    uplink_addresses: _containers.RepeatedScalarFieldContainer[str]
    transit_cidr: str
    prefix: str
    registry: str
    registry_healthy: bool
    registry_error: str
    registry_last_success_unix_ms: int
    probed_ports: int
    node_address: str
    host_netns: str
    host_port_low: int
    host_port_high: int
    probe_interval_s: float
    probe_timeout_s: float
    state_dir: str
    def __init__(self, node_id: _Optional[str] = ..., version: _Optional[str] = ..., capacity: _Optional[int] = ..., allocations: _Optional[int] = ..., free_slots: _Optional[int] = ..., ready_slots: _Optional[int] = ..., uplink: _Optional[str] = ..., uplink_addresses: _Optional[_Iterable[str]] = ..., transit_cidr: _Optional[str] = ..., prefix: _Optional[str] = ..., registry: _Optional[str] = ..., registry_healthy: _Optional[bool] = ..., registry_error: _Optional[str] = ..., registry_last_success_unix_ms: _Optional[int] = ..., probed_ports: _Optional[int] = ..., node_address: _Optional[str] = ..., host_netns: _Optional[str] = ..., host_port_low: _Optional[int] = ..., host_port_high: _Optional[int] = ..., probe_interval_s: _Optional[float] = ..., probe_timeout_s: _Optional[float] = ..., state_dir: _Optional[str] = ...) -> None: ...

class ResyncRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResyncResponse(_message.Message):
    __slots__ = ("ruleset_reloaded", "elements", "slots_repaired", "slots_quarantined")
    RULESET_RELOADED_FIELD_NUMBER: _ClassVar[int]
    ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_REPAIRED_FIELD_NUMBER: _ClassVar[int]
    SLOTS_QUARANTINED_FIELD_NUMBER: _ClassVar[int]
    ruleset_reloaded: bool
    elements: int
    slots_repaired: int
    slots_quarantined: int
    def __init__(self, ruleset_reloaded: _Optional[bool] = ..., elements: _Optional[int] = ..., slots_repaired: _Optional[int] = ..., slots_quarantined: _Optional[int] = ...) -> None: ...

class ProbePortRequest(_message.Message):
    __slots__ = ("sandbox_id", "guest_port", "timeout_ms")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    GUEST_PORT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    guest_port: int
    timeout_ms: int
    def __init__(self, sandbox_id: _Optional[str] = ..., guest_port: _Optional[int] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class ProbePortResponse(_message.Message):
    __slots__ = ("reachable", "outcome", "rtt_ms", "host_port")
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    RTT_MS_FIELD_NUMBER: _ClassVar[int]
    HOST_PORT_FIELD_NUMBER: _ClassVar[int]
    reachable: bool
    outcome: str
    rtt_ms: float
    host_port: int
    def __init__(self, reachable: _Optional[bool] = ..., outcome: _Optional[str] = ..., rtt_ms: _Optional[float] = ..., host_port: _Optional[int] = ...) -> None: ...

class UsageCounter(_message.Message):
    __slots__ = ("packets", "bytes")
    PACKETS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    packets: int
    bytes: int
    def __init__(self, packets: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class UsagePath(_message.Message):
    __slots__ = ("sent", "received")
    SENT_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    sent: UsageCounter
    received: UsageCounter
    def __init__(self, sent: _Optional[_Union[UsageCounter, _Mapping]] = ..., received: _Optional[_Union[UsageCounter, _Mapping]] = ...) -> None: ...

class SandboxUsage(_message.Message):
    __slots__ = ("sandbox_id", "egress", "ingress", "host")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    EGRESS_FIELD_NUMBER: _ClassVar[int]
    INGRESS_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    egress: UsagePath
    ingress: UsagePath
    host: UsagePath
    def __init__(self, sandbox_id: _Optional[str] = ..., egress: _Optional[_Union[UsagePath, _Mapping]] = ..., ingress: _Optional[_Union[UsagePath, _Mapping]] = ..., host: _Optional[_Union[UsagePath, _Mapping]] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ("sandbox_id", "last_reading")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_READING_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    last_reading: bool
    def __init__(self, sandbox_id: _Optional[str] = ..., last_reading: _Optional[bool] = ...) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ("usage", "read_unix_ms")
    USAGE_FIELD_NUMBER: _ClassVar[int]
    READ_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    usage: _containers.RepeatedCompositeFieldContainer[SandboxUsage]
    read_unix_ms: int
    def __init__(self, usage: _Optional[_Iterable[_Union[SandboxUsage, _Mapping]]] = ..., read_unix_ms: _Optional[int] = ...) -> None: ...

class SetEgressAddressRequest(_message.Message):
    __slots__ = ("sandbox_id", "egress_address")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    EGRESS_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    egress_address: str
    def __init__(self, sandbox_id: _Optional[str] = ..., egress_address: _Optional[str] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("egress_bps", "ingress_bps", "burst_bytes", "egress_pps", "ingress_pps", "burst_packets")
    EGRESS_BPS_FIELD_NUMBER: _ClassVar[int]
    INGRESS_BPS_FIELD_NUMBER: _ClassVar[int]
    BURST_BYTES_FIELD_NUMBER: _ClassVar[int]
    EGRESS_PPS_FIELD_NUMBER: _ClassVar[int]
    INGRESS_PPS_FIELD_NUMBER: _ClassVar[int]
    BURST_PACKETS_FIELD_NUMBER: _ClassVar[int]
    egress_bps: int
    ingress_bps: int
    burst_bytes: int
    egress_pps: int
    ingress_pps: int
    burst_packets: int
    def __init__(self, egress_bps: _Optional[int] = ..., ingress_bps: _Optional[int] = ..., burst_bytes: _Optional[int] = ..., egress_pps: _Optional[int] = ..., ingress_pps: _Optional[int] = ..., burst_packets: _Optional[int] = ...) -> None: ...

class SetLimitsRequest(_message.Message):
    __slots__ = ("sandbox_id", "limits")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    limits: Limits
    def __init__(self, sandbox_id: _Optional[str] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ...) -> None: ...

class ListFlowsRequest(_message.Message):
    __slots__ = ("sandbox_id", "since_unix_ms", "until_unix_ms", "limit")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    since_unix_ms: int
    until_unix_ms: int
    limit: int
    def __init__(self, sandbox_id: _Optional[str] = ..., since_unix_ms: _Optional[int] = ..., until_unix_ms: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class FlowRecord(_message.Message):
    __slots__ = ("sandbox_id", "direction", "protocol", "source", "source_port", "destination", "destination_port", "domain", "bytes_sent", "bytes_received", "packets_sent", "packets_received", "start_unix_ms", "end_unix_ms", "end_reason", "while_down")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PORT_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_PORT_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    PACKETS_SENT_FIELD_NUMBER: _ClassVar[int]
    PACKETS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    START_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    END_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    END_REASON_FIELD_NUMBER: _ClassVar[int]
    WHILE_DOWN_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    direction: str
    protocol: str
    source: str
    source_port: int
    destination: str
    destination_port: int
    domain: str
    bytes_sent: int
    bytes_received: int
    packets_sent: int
    packets_received: int
    start_unix_ms: int
    end_unix_ms: int
    end_reason: str
    while_down: bool
    def __init__(self, sandbox_id: _Optional[str] = ..., direction: _Optional[str] = ..., protocol: _Optional[str] = ..., source: _Optional[str] = ..., source_port: _Optional[int] = ..., destination: _Optional[str] = ..., destination_port: _Optional[int] = ..., domain: _Optional[str] = ..., bytes_sent: _Optional[int] = ..., bytes_received: _Optional[int] = ..., packets_sent: _Optional[int] = ..., packets_received: _Optional[int] = ..., start_unix_ms: _Optional[int] = ..., end_unix_ms: _Optional[int] = ..., end_reason: _Optional[str] = ..., while_down: _Optional[bool] = ...) -> None: ...

class ListFlowsResponse(_message.Message):
    __slots__ = ("flows", "truncated")
    FLOWS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    flows: _containers.RepeatedCompositeFieldContainer[FlowRecord]
    truncated: bool
    def __init__(self, flows: _Optional[_Iterable[_Union[FlowRecord, _Mapping]]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class HeaderTransform(_message.Message):
    __slots__ = ("op", "header", "value")
    OP_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    op: str
    header: str
    value: str
    def __init__(self, op: _Optional[str] = ..., header: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class RequestRule(_message.Message):
    __slots__ = ("id", "domain", "methods", "path", "ports", "action", "transforms", "secrets_over_plain_http")
    ID_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TRANSFORMS_FIELD_NUMBER: _ClassVar[int]
    SECRETS_OVER_PLAIN_HTTP_FIELD_NUMBER: _ClassVar[int]
    id: str
    domain: str
    methods: _containers.RepeatedScalarFieldContainer[str]
    path: str
    ports: _containers.RepeatedScalarFieldContainer[int]
    action: str
    transforms: _containers.RepeatedCompositeFieldContainer[HeaderTransform]
    secrets_over_plain_http: bool
    def __init__(self, id: _Optional[str] = ..., domain: _Optional[str] = ..., methods: _Optional[_Iterable[str]] = ..., path: _Optional[str] = ..., ports: _Optional[_Iterable[int]] = ..., action: _Optional[str] = ..., transforms: _Optional[_Iterable[_Union[HeaderTransform, _Mapping]]] = ..., secrets_over_plain_http: _Optional[bool] = ...) -> None: ...

class SetRequestRulesRequest(_message.Message):
    __slots__ = ("sandbox_id", "rules")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    rules: _containers.RepeatedCompositeFieldContainer[RequestRule]
    def __init__(self, sandbox_id: _Optional[str] = ..., rules: _Optional[_Iterable[_Union[RequestRule, _Mapping]]] = ...) -> None: ...

class GetRequestRulesRequest(_message.Message):
    __slots__ = ("sandbox_id",)
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    def __init__(self, sandbox_id: _Optional[str] = ...) -> None: ...

class RequestRules(_message.Message):
    __slots__ = ("sandbox_id", "rules")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    rules: _containers.RepeatedCompositeFieldContainer[RequestRule]
    def __init__(self, sandbox_id: _Optional[str] = ..., rules: _Optional[_Iterable[_Union[RequestRule, _Mapping]]] = ...) -> None: ...

class SetSecretRequest(_message.Message):
    __slots__ = ("sandbox_id", "name", "value", "label")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    name: str
    value: str
    label: str
    def __init__(self, sandbox_id: _Optional[str] = ..., name: _Optional[str] = ..., value: _Optional[str] = ..., label: _Optional[str] = ...) -> None: ...

class DeleteSecretRequest(_message.Message):
    __slots__ = ("sandbox_id", "name", "label")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    name: str
    label: str
    def __init__(self, sandbox_id: _Optional[str] = ..., name: _Optional[str] = ..., label: _Optional[str] = ...) -> None: ...

class ListSecretsRequest(_message.Message):
    __slots__ = ("sandbox_id", "label")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    label: str
    def __init__(self, sandbox_id: _Optional[str] = ..., label: _Optional[str] = ...) -> None: ...

class SecretNames(_message.Message):
    __slots__ = ("sandbox_id", "names", "deleted", "label")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    names: _containers.RepeatedScalarFieldContainer[str]
    deleted: bool
    label: str
    def __init__(self, sandbox_id: _Optional[str] = ..., names: _Optional[_Iterable[str]] = ..., deleted: _Optional[bool] = ..., label: _Optional[str] = ...) -> None: ...

class GetInterceptCARequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InterceptCA(_message.Message):
    __slots__ = ("certificate_pem",)
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: str
    def __init__(self, certificate_pem: _Optional[str] = ...) -> None: ...

class HttpRequestRecord(_message.Message):
    __slots__ = ("method", "host", "path", "status", "bytes_in", "bytes_out", "duration_ms", "rule", "action", "transform", "tls")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TRANSFORM_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    method: str
    host: str
    path: str
    status: int
    bytes_in: int
    bytes_out: int
    duration_ms: float
    rule: str
    action: str
    transform: str
    tls: bool
    def __init__(self, method: _Optional[str] = ..., host: _Optional[str] = ..., path: _Optional[str] = ..., status: _Optional[int] = ..., bytes_in: _Optional[int] = ..., bytes_out: _Optional[int] = ..., duration_ms: _Optional[float] = ..., rule: _Optional[str] = ..., action: _Optional[str] = ..., transform: _Optional[str] = ..., tls: _Optional[bool] = ...) -> None: ...

class SetPausedRequest(_message.Message):
    __slots__ = ("sandbox_id", "paused", "wake")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    WAKE_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    paused: bool
    wake: bool
    def __init__(self, sandbox_id: _Optional[str] = ..., paused: _Optional[bool] = ..., wake: _Optional[bool] = ...) -> None: ...

class SetPausedResponse(_message.Message):
    __slots__ = ("changed",)
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    changed: bool
    def __init__(self, changed: _Optional[bool] = ...) -> None: ...
