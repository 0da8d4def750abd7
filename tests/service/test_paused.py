"""SetPaused through the agent's gRPC API (issue 24 part 1): the registry record says
paused (and wake) within a moment, a restarted agent still publishes it, and clearing
it publishes the running record again; a repeated call changes nothing."""
from __future__ import annotations

import time

import grpc
import pytest

from tests.service.daemon import Daemon, write_config
from tests.service.test_registry_agent import wait_for
from tests.testbed.registry_read import read_record as read


def test_set_paused_is_published_and_survives_a_restart(bed, tmp_path):
    url = f"sqlite://{tmp_path}/registry.db"
    config = write_config(bed, tmp_path, pool_size=1, registry_url=url)
    daemon = Daemon(config).start()
    try:
        with daemon.client() as c:
            c.allocate("nap-1")
            c.expose("nap-1", 3000)
            wait_for(lambda: (rec := read(url, "nap-1")) is not None and rec.port(3000) is not None, 5, "the record")
            assert c.set_paused("nap-1", True, wake=True) is True
            wait_for(lambda: (rec := read(url, "nap-1")).paused and rec.wake, 5, "a paused record")
            assert read(url, "nap-1").port(3000) is not None            # the ports stay in the record
            assert c.set_paused("nap-1", True, wake=True) is False      # a retry writes nothing
            with pytest.raises(grpc.RpcError) as err:
                c.set_paused("nobody", True)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        daemon.stop()
        restarted_at = time.time()
        daemon = Daemon(config).start()
        wait_for(lambda: (rec := read(url, "nap-1")) is not None and rec.updated_at > restarted_at, 5,
                 "a fresh write after the restart")
        assert read(url, "nap-1").paused and read(url, "nap-1").wake
        with daemon.client() as c:
            assert c.set_paused("nap-1", False) is True
        wait_for(lambda: not read(url, "nap-1").paused, 5, "the running record")
        assert not read(url, "nap-1").wake
    finally:
        if daemon.proc and daemon.proc.poll() is None:
            daemon.stop()
