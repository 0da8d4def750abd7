"""The guest image's host programs (tests/testbed/microvm/hostbins.py): curl with
its shared libraries and loader, at their host paths, keyed by their contents."""
from __future__ import annotations

import gzip
from pathlib import Path

from tests.testbed.microvm import image
from tests.testbed.microvm.hostbins import digest, guest_files, shared_libraries
from tests.testbed.microvm.image import write_initramfs


def cpio_names(path: Path) -> list[str]:
    """Entry names of a gzip newc archive, in order."""
    data, names, pos = gzip.decompress(path.read_bytes()), [], 0
    while True:
        header = data[pos:pos + 110]
        size, namesize = int(header[54:62], 16), int(header[94:102], 16)
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        if name == "TRAILER!!!":
            return names
        names.append(name)
        pos += 110 + namesize
        pos += -pos % 4
        pos += size + (-size % 4)


def test_curl_comes_with_its_loader_and_tls_libraries():
    libs = shared_libraries(Path("/usr/bin/curl"))
    names = {p.name for p in libs}
    assert "ld-linux-x86-64.so.2" in names and {"libcurl.so.4", "libssl.so.3", "libcrypto.so.3"} <= names
    files = guest_files()
    assert "usr/bin/curl" in files and "lib64/ld-linux-x86-64.so.2" in files
    assert files["usr/bin/curl"][:4] == b"\x7fELF"


def test_the_key_digest_follows_paths_and_contents():
    files = {"usr/bin/curl": b"a", "lib/x.so": b"b"}
    assert digest(files) == digest(dict(reversed(files.items())))
    assert digest(files) != digest(files | {"lib/x.so": b"c"})
    assert digest(files) != digest({"usr/bin/curl": b"a", "lib/y.so": b"b"})


def test_the_initramfs_has_each_directory_before_its_files_and_an_empty_trust_store_dir(tmp_path, monkeypatch):
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"#!/bin/sh\n")
    busybox.chmod(0o755)
    out = tmp_path / "initramfs.img"
    monkeypatch.setattr(image, "_busybox_applets", lambda _: [])   # a stand-in busybox lists no applets
    write_initramfs(out, busybox, [], {"lib/x86_64-linux-gnu/libz.so.1": b"z", "usr/bin/curl": b"c"})
    names = cpio_names(out)
    for f in ("lib/x86_64-linux-gnu/libz.so.1", "usr/bin/curl"):
        for parent in Path(f).parents:
            if str(parent) != ".":
                assert names.index(str(parent)) < names.index(f), (parent, names)
    assert "etc/ssl/certs" in names and not any(n.startswith("etc/ssl/certs/") for n in names)
