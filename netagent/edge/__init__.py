"""The reference edge: an HTTP/1.1 reverse proxy from `{port}-{sandboxId}.{domain}`
to the node and host port the routing registry names. See docs/edge.md."""
from __future__ import annotations

from .proxy import EdgeConfig, EdgeServer
from .routing import RouteError, Router, Target

__all__ = ["EdgeConfig", "EdgeServer", "RouteError", "Router", "Target"]
