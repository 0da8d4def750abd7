"""The CLI's hand-written protobuf-to-dict (netagent/operator/proto_dict.py)
against MessageToDict, field by field: messages with every field set (filled
from the descriptor, so a field added to the proto is set here and fails the
comparison until the converter prints it), with nothing set (defaults and
presence), and with edge values."""
from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor as F
from google.protobuf.json_format import MessageToDict
from google.protobuf.message_factory import GetMessageClass

from netagent.api import netagent_pb2 as pb
from netagent.operator import proto_dict
from netagent.operator.commands import to_dict

INTS = {F.TYPE_INT32, F.TYPE_UINT32, F.TYPE_SINT32, F.TYPE_FIXED32, F.TYPE_SFIXED32}
LONGS = {F.TYPE_INT64, F.TYPE_UINT64, F.TYPE_SINT64, F.TYPE_FIXED64, F.TYPE_SFIXED64}


def _value(field: Any, i: int) -> Any:
    """A non-default value for one (element of a) field; 64-bit ones above 2**53."""
    t = field.type
    if t == F.TYPE_STRING:
        return f"{field.name}-{i}"
    if t == F.TYPE_BYTES:
        return f"{field.name}-{i}".encode()
    if t == F.TYPE_BOOL:
        return True
    if t in INTS:
        return field.number + i + 1
    if t in LONGS:
        return 2**60 + field.number + i
    if t in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return field.number + i + 0.5
    if t == F.TYPE_ENUM:
        return field.enum_type.values[-1].number
    raise AssertionError(f"no filler for {field.full_name}")


def filled(cls: Any) -> Any:
    """Every field set, recursively: two elements for repeated fields and maps."""
    msg = cls()
    for field in cls.DESCRIPTOR.fields:
        target = getattr(msg, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for i in range(2):
                target[f"k{i}"] = _value(value_field, i)
        elif field.message_type is not None:
            sub = filled(GetMessageClass(field.message_type))
            for _ in range(2) if field.is_repeated else ():
                target.add().CopyFrom(sub)
            if not field.is_repeated:
                target.CopyFrom(sub)
        elif field.is_repeated:
            target.extend(_value(field, i) for i in range(2))
        else:
            setattr(msg, field.name, _value(field, 0))
    return msg


def reference(msg: Any) -> dict[str, Any]:
    return MessageToDict(msg, always_print_fields_with_no_presence=True)


def test_every_hand_converted_message_matches_message_to_dict_with_every_field_set():
    for cls, convert in proto_dict.CONVERTERS.items():
        msg = filled(cls)
        assert convert(msg) == reference(msg), cls.__name__


def test_every_hand_converted_message_matches_with_nothing_set():
    for cls, convert in proto_dict.CONVERTERS.items():
        assert convert(cls()) == reference(cls()), cls.__name__


def test_presence_edge_values_and_field_order():
    sbx = filled(pb.Sandbox)
    sbx.policy.ClearField("internet")            # optional: absent, not False
    sbx.policy.allow_out.append("*.example.com")
    sbx.ports[0].ClearField("reachable")         # not probed yet
    sbx.ports[1].reachable = False               # probed: down (present although false)
    sbx.ports[1].protocol = 99                   # an enum value this CLI does not know: its number
    sbx.ClearField("limits")
    assert proto_dict.sandbox(sbx) == reference(sbx)
    info = filled(pb.HostInfo)
    info.probe_interval_s, info.probe_timeout_s = float("inf"), float("-inf")
    assert proto_dict.host_info(info) == reference(info)
    usage = filled(pb.SandboxUsage)
    usage.ClearField("ingress")
    usage.egress.ClearField("received")
    assert proto_dict.sandbox_usage(usage) == reference(usage)
    # `status` prints HostInfo in this order: the proto's, whatever is zero
    assert list(proto_dict.host_info(pb.HostInfo())) == list(reference(filled(pb.HostInfo)))


def test_commands_to_dict_uses_the_converters_and_falls_back_for_other_messages():
    sbx = filled(pb.Sandbox)
    assert to_dict(sbx) == reference(sbx)
    other = pb.ResyncResponse(ruleset_reloaded=True, elements=3)
    assert to_dict(other) == reference(other)
