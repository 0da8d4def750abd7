"""The systemd notify protocol against a datagram socket the test listens on."""
from __future__ import annotations

import asyncio
import os
import socket
import uuid

import pytest

from netagent import sdnotify


def _listener(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.setblocking(False)
    return sock


@pytest.fixture
def path_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify.sock")
    sock = _listener(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield sock
    sock.close()


@pytest.fixture
def abstract_socket(monkeypatch):
    name = f"netagent-test-{uuid.uuid4().hex}"
    sock = _listener("\0" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    yield sock
    sock.close()


def drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096))
        except BlockingIOError:
            return out


def test_no_notify_socket_means_no_systemd(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False


def test_ready_and_stopping_on_a_path_socket(path_socket):
    assert sdnotify.notify("READY=1")
    assert sdnotify.notify("STATUS=pool 16/16\nSTOPPING=1")
    assert drain(path_socket) == [b"READY=1", b"STATUS=pool 16/16\nSTOPPING=1"]


def test_abstract_namespace_socket(abstract_socket):
    assert sdnotify.notify("READY=1")
    assert sdnotify.notify("STOPPING=1")
    assert drain(abstract_socket) == [b"READY=1", b"STOPPING=1"]


def test_unreachable_socket_returns_false(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sdnotify.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")
    assert sdnotify.notify("READY=1") is False


def test_watchdog_interval(monkeypatch):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert sdnotify.watchdog_interval() == 15.0              # half of WatchdogSec=30
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert sdnotify.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("0", "soon", "-5"):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert sdnotify.watchdog_interval() is None


async def test_watchdog_loop_pings_only_while_healthy(abstract_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "40000")   # 40 ms -> a ping every 20 ms
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    healthy = True
    task = asyncio.create_task(sdnotify.watchdog_loop(lambda: healthy))
    try:
        await asyncio.sleep(0.2)
        pings = drain(abstract_socket)
        assert len(pings) >= 3 and set(pings) == {b"WATCHDOG=1"}
        healthy = False
        await asyncio.sleep(0.05)   # a ping may have been in flight
        drain(abstract_socket)
        await asyncio.sleep(0.15)
        assert drain(abstract_socket) == []
        healthy = True
        await asyncio.sleep(0.1)
        assert b"WATCHDOG=1" in drain(abstract_socket)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_watchdog_loop_with_a_raising_check_withholds_pings(path_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "20000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)

    def broken() -> bool:
        raise RuntimeError("health check bug")
    task = asyncio.create_task(sdnotify.watchdog_loop(broken))
    try:
        await asyncio.sleep(0.1)
        assert not task.done()
        assert drain(path_socket) == []
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_watchdog_loop_returns_when_watchdog_is_off(monkeypatch):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    await asyncio.wait_for(sdnotify.watchdog_loop(lambda: True), timeout=1)
