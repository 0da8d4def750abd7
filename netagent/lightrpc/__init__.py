"""Unary gRPC calls over HTTP/2 on a unix socket without grpcio, for the CLI's
read commands (wire.py: the bytes; client.py: the socket and the calls)."""
