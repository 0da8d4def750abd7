"""Sandbox secrets at rest: AES-256-GCM under a host key kept in a root-only
0600 file. The store file holds only ciphertexts (name and sandbox bound in as
associated data); it is replaced atomically (write, fsync, rename), so a kill -9
leaves the old or the new file, never half of one. Values never leave this
module except to the interceptor (intercept/control.py)."""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .ca import write_private


def load_or_create_key(path: Path) -> bytes:
    if not path.exists():
        write_private(path, AESGCM.generate_key(bit_length=256))
    key = path.read_bytes()
    if len(key) != 32:
        raise RuntimeError(f"{path}: the host key must be 32 bytes")
    return key


class SecretStore:
    def __init__(self, path: Path, key_path: Path):
        self.path = path
        self._aead = AESGCM(load_or_create_key(key_path))
        self._sealed: dict[str, dict[str, str]] = {}   # sandbox id -> name -> base64(nonce + ciphertext)
        if path.exists():
            self._sealed = json.loads(path.read_text())

    @staticmethod
    def _aad(sandbox_id: str, name: str) -> bytes:
        return f"{sandbox_id}\0{name}".encode()

    def names(self, sandbox_id: str) -> list[str]:
        return sorted(self._sealed.get(sandbox_id, {}))

    def sandboxes(self) -> list[str]:
        return sorted(self._sealed)

    def values(self, sandbox_id: str) -> dict[str, str]:
        out = {}
        for name, blob in self._sealed.get(sandbox_id, {}).items():
            raw = base64.b64decode(blob)
            out[name] = self._aead.decrypt(raw[:12], raw[12:], self._aad(sandbox_id, name)).decode()
        return out

    def set(self, sandbox_id: str, name: str, value: str) -> None:
        nonce = os.urandom(12)
        sealed = nonce + self._aead.encrypt(nonce, value.encode(), self._aad(sandbox_id, name))
        new = {k: dict(v) for k, v in self._sealed.items()}
        new.setdefault(sandbox_id, {})[name] = base64.b64encode(sealed).decode()
        self._save(new)

    def delete(self, sandbox_id: str, name: str | None = None) -> bool:
        """One secret, or (name None) all of a sandbox's. False: there was none."""
        if sandbox_id not in self._sealed or (name is not None and name not in self._sealed[sandbox_id]):
            return False
        new = {k: dict(v) for k, v in self._sealed.items()}
        if name is None or len(new[sandbox_id]) == 1:
            del new[sandbox_id]
        else:
            del new[sandbox_id][name]
        self._save(new)
        return True

    def _save(self, sealed: dict[str, dict[str, str]]) -> None:
        write_private(self.path, json.dumps(sealed, sort_keys=True).encode())
        self._sealed = sealed
