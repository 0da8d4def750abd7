"""The registry tests use the root conftest's `redis_server` fixture, and a real
Redis Cluster (3 masters + 3 replicas on loopback ports) from here."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.testbed.redis_cluster import RedisCluster
from tests.testbed.redis_proc import RedisServer

__all__ = ["RedisServer", "RedisCluster"]


@pytest.fixture(scope="session")
def shared_redis_cluster(tmp_path_factory):
    """One cluster for the tests that leave it up; each user flushes it first (redis_cluster)."""
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.create()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster(shared_redis_cluster):
    """The shared cluster, empty and settled."""
    shared_redis_cluster.wait_settled()
    shared_redis_cluster.flush()
    return shared_redis_cluster


@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty registry of each backend."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'registry.db'}"
    if request.param == "redis":
        return request.getfixturevalue("redis_server").url
    return request.getfixturevalue("redis_cluster").url


@pytest.fixture
def own_redis_cluster(tmp_path):
    """A cluster of the test's own, for tests that kill its nodes."""
    cluster = RedisCluster(tmp_path / "cluster")
    try:
        cluster.create()
        yield cluster
    finally:
        cluster.stop()
