"""The interceptor's request-record tail (intercept/requestlog.py) on plain
files: offsets saved across a restart, partial lines left for later, a
finished writer's file removed, read bytes given back to the filesystem."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

from netagent.intercept.requestlog import PUNCH_EVERY, RequestTail


def line(path: str) -> bytes:
    return json.dumps({"path": path, "sandbox": "s"}).encode() + b"\n"


def tail(tmp_path, got: list) -> RequestTail:  # type: ignore[no-untyped-def]
    return RequestTail(tmp_path, lambda r: got.append(r["path"]))


def test_a_restarted_tail_reads_only_what_came_after_its_saved_offset(tmp_path):
    got: list[str] = []
    first = tail(tmp_path, got)
    fd, path = first.open_for_writer()
    os.write(fd, line("/a") + b"Proxy na_tls started.\n" + line("/b"))
    assert asyncio.run(first.read_new()) == 2 and got == ["/a", "/b"]
    os.write(fd, line("/c") + line("/d")[:10])       # a line still being written
    again = tail(tmp_path, got)                      # the agent restarted
    assert asyncio.run(again.read_new()) == 1 and got == ["/a", "/b", "/c"]
    os.write(fd, line("/d")[10:])
    assert asyncio.run(again.read_new()) == 1 and got == ["/a", "/b", "/c", "/d"]
    assert asyncio.run(tail(tmp_path, got).read_new()) == 0
    os.close(fd)


def test_an_older_file_goes_once_read_and_its_writer_exited_the_newest_stays(tmp_path):
    got: list[str] = []
    t = tail(tmp_path, got)
    old_fd, old = t.open_for_writer()
    # stands in for the old haproxy (a live writer's cmdline names haproxy)
    writer = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(30)",
                               "haproxy-stand-in"], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "up\n"   # exec done: its cmdline set
        t.spawned(old, writer.pid)
        os.write(old_fd, line("/old"))
        new_fd, new = t.open_for_writer()
        os.write(new_fd, line("/new"))
        asyncio.run(t.read_new())
        assert sorted(got) == ["/new", "/old"] and old.exists()   # its writer is alive: it may write more
    finally:
        writer.kill()
        writer.wait()
    asyncio.run(t.read_new())
    assert not old.exists() and new.exists() and sorted(got) == ["/new", "/old"]
    os.close(old_fd)
    os.close(new_fd)


def test_read_bytes_are_punched_out_of_the_file(tmp_path):
    got: list[str] = []
    t = tail(tmp_path, got)
    fd, path = t.open_for_writer()
    chunk = b"".join(line(f"/{i:06d}") for i in range(2000))
    for _ in range(PUNCH_EVERY // len(chunk) + 2):
        os.write(fd, chunk)
    asyncio.run(t.read_new())
    st = os.stat(path)
    assert st.st_size > PUNCH_EVERY and st.st_blocks * 512 < st.st_size // 2, (st.st_size, st.st_blocks)
    os.close(fd)
