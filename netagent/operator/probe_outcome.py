"""`netagent probe`: one on-demand SYN probe's answer, and the stored view of
that port, in words (pure functions, no I/O)."""
from __future__ import annotations

from typing import Any

from .ages import ago, from_ms


def outcome(result: str, rtt_ms: float, guest_port: int, timeout_ms: int) -> str:
    """What the guest answered: open, closed, nothing, or the probe failed."""
    if result == "syn-ack":
        return f"open (SYN-ACK in {rtt_ms:.2f} ms)"
    if result == "rst":
        return f"closed (RST in {rtt_ms:.2f} ms): nothing listens on {guest_port} in the guest"
    if result == "timeout":
        return f"no answer within {timeout_ms} ms: the guest is down, firewalled, or not attached"
    return "the probe could not be sent (an error on the host; the agent's log says which)"


def exposure(sandbox_id: str, guest_port: int, host_port: int) -> str:
    if host_port:
        return f"exposed on host port {host_port}"
    return f"not exposed (`netagent expose {sandbox_id} {guest_port}` maps it to a host port)"


def stored_view(port: dict[str, Any], registry_on: bool, now: float) -> str:
    """The agent's last background probe of an exposed port: what it publishes."""
    label = "registry view" if registry_on else "agent's view (registry off)"
    reachable = port.get("reachable")
    if reachable is None:
        return f"{label}: not probed yet"
    state = "reachable" if reachable else "not reachable"
    return (f"{label}: {state} since {ago(from_ms(port.get('changedUnixMs')), now)}, "
            f"last checked {ago(from_ms(port.get('checkedUnixMs')), now)}")


def lag_note(probed_open: bool, port: dict[str, Any], interval_s: float) -> str:
    """A note when this probe and the stored view disagree (the view catches up)."""
    reachable = port.get("reachable")
    if reachable is None or reachable == probed_open:
        return ""
    return (f"note: this probe and the registry view disagree; the agent probes the port every "
            f"{interval_s:g} s (faster after a change) and publishes the change when it confirms it")
