"""The DNS proxy that enforces domain allowlists."""
