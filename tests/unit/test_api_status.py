"""A core error's message reaches a gRPC client capped, with its own status code."""
from __future__ import annotations

from types import SimpleNamespace

import grpc

from netagent.api import netagent_pb2 as pb
from netagent.api import netagent_pb2_grpc as pb_grpc
from netagent.api.service import NetAgentService
from netagent.api.status import MAX_MESSAGE_BYTES, encoded_size, status_message
from netagent.errors import Unavailable

# What a failed nft transaction of 400 elements says: one line per element, ~40 KiB.
FAILED_TRANSACTION = "commit failed: " + "\n".join(
    f"Error: Could not process rule: No such file or directory\n"
    f"delete element inet na egress_open {{ 10.12.{i // 128}.{2 * (i % 128) + 1} }}" for i in range(400))


def test_a_short_message_is_kept_whole() -> None:
    assert status_message("sandbox 'a' not found") == "sandbox 'a' not found"


def test_a_long_message_keeps_its_head_and_says_how_much_was_cut() -> None:
    capped = status_message(FAILED_TRANSACTION)
    assert encoded_size(capped) <= MAX_MESSAGE_BYTES
    head, _, rest = capped.partition(" [... ")
    assert FAILED_TRANSACTION.startswith(head) and len(head) > 1000
    assert rest == f"{len(FAILED_TRANSACTION) - len(head)} more characters]"


def test_escaped_characters_count_three_bytes() -> None:
    # newlines and non-ASCII are percent-encoded in the grpc-message trailer
    capped = status_message("é\n" * 5000)
    assert encoded_size(capped) <= MAX_MESSAGE_BYTES
    assert len(capped) < MAX_MESSAGE_BYTES / 3   # a cap on characters would have let 4,000 through


class FailingCore:
    """Stands in for the agent: every release fails as a rolled-back nft transaction does."""
    config = SimpleNamespace(egress_addresses=())

    async def run_release(self, op: object) -> bool:
        raise Unavailable(FAILED_TRANSACTION)


async def test_a_client_sees_the_status_sent_not_resource_exhausted(tmp_path) -> None:
    server = grpc.aio.server()
    pb_grpc.add_NetAgentServicer_to_server(NetAgentService(FailingCore()), server)  # type: ignore[arg-type]
    server.add_insecure_port(f"unix:{tmp_path}/api.sock")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"unix:{tmp_path}/api.sock") as channel:
            try:
                await pb_grpc.NetAgentStub(channel).Release(pb.ReleaseRequest(sandbox_id="sbx-1"), timeout=10)
            except grpc.aio.AioRpcError as exc:
                error = exc
            else:
                raise AssertionError("the release did not fail")
    finally:
        await server.stop(0)
    assert error.code() == grpc.StatusCode.UNAVAILABLE, (error.code(), (error.details() or "")[:200])
    assert error.details().startswith("commit failed: Error: Could not process rule")
    assert error.details().endswith("more characters]")
