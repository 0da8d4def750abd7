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


def test_resume_point_after_a_stop_at_each_step_of_a_batch():
    """A batch: log written, events committed with read_to, offsets and the log's size saved."""
    from netagent.intercept.requestlog import resume_point
    saved, mark = {"requests.00000001.log": 100}, 500
    # stopped while the log was written: its lines past the mark go, the batch is read again
    assert resume_point(saved, mark, {"requests.00000001.log": 100}, 650) == (saved, 500)
    # stopped after the commit, before the save: the log has the batch, read on past it
    assert resume_point(saved, mark, {"requests.00000001.log": 180}, 650) == ({"requests.00000001.log": 180}, None)
    # stopped between batches; events off (nothing committed); the log rotated away by an operator
    assert resume_point(saved, mark, {"requests.00000001.log": 100}, 500) == (saved, None)
    assert resume_point(saved, mark, {}, 500) == (saved, None)
    assert resume_point(saved, mark, {}, 20) == (saved, None)
    # a file's offsets saved ahead of the last commit (lines without records, events failing): saved wins
    assert resume_point({"a": 300, "b": 10}, mark, {"a": 200, "b": 40}, 500) == ({"a": 300, "b": 40}, None)


def test_recover_cuts_uncommitted_log_lines_and_they_are_recorded_once(tmp_path):
    log_path = tmp_path / "requests.jsonl"
    got: list[str] = []

    async def write_log(read_to):  # type: ignore[no-untyped-def]
        with open(log_path, "a") as f:
            f.write("".join(json.dumps({"path": p}) + "\n" for p in got[len(seen):]))
        seen[:] = got
        return log_path.stat().st_size
    seen: list[str] = []
    t = RequestTail(tmp_path, lambda r: got.append(r["path"]), write_log)
    fd, _ = t.open_for_writer()
    os.write(fd, line("/a"))
    asyncio.run(t.read_new())
    os.write(fd, line("/b"))
    with open(log_path, "a") as f:        # /b reached the log, then the agent was killed: nothing else
        f.write(json.dumps({"path": "/b"}) + "\n")
    again = RequestTail(tmp_path, lambda r: got.append(r["path"]), write_log)
    again.recover({}, log_path)
    asyncio.run(again.read_new())
    assert [json.loads(x)["path"] for x in log_path.read_text().splitlines()] == ["/a", "/b"]
    os.close(fd)
