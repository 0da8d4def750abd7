"""The fingerprint of a ruleset listing. Its own module so that nft.py (and the
CLI's light `status`) need not import ruleset.py, which pulls in the Config."""
from __future__ import annotations

import hashlib


def fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
