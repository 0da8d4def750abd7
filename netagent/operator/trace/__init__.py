"""`netagent trace`: follow one crafted packet through the host's rules.

command.py runs it (table.py adds the trace table, inject.py sends the
packet), explain.py puts the kernel's trace lines into a path and a verdict."""
from .command import UsageError, from_internet, from_sandbox

__all__ = ["UsageError", "from_internet", "from_sandbox"]
