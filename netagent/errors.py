"""Typed errors. Each maps to one gRPC status code in the service layer."""


class NetagentError(Exception):
    code = "INTERNAL"


class ConfigError(NetagentError):
    code = "INVALID_ARGUMENT"


class InvalidArgument(NetagentError):
    code = "INVALID_ARGUMENT"


class NotFound(NetagentError):
    code = "NOT_FOUND"


class Exhausted(NetagentError):
    """No free slot or host port."""
    code = "RESOURCE_EXHAUSTED"


class Unavailable(NetagentError):
    """A kernel operation failed; nothing was half-applied and a retry is safe."""
    code = "UNAVAILABLE"


class Conflict(NetagentError):
    """An id or host port is already used with a different spec."""
    code = "ALREADY_EXISTS"


class FailedPrecondition(NetagentError):
    code = "FAILED_PRECONDITION"
