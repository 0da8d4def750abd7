"""Scripts that run inside a namespace and watch a flow (tests only)."""

# Read /stream line by line; print the number of chunks and the longest gap.
STREAM_READER = r"""
import json, sys, time, urllib.request
last = time.monotonic(); gap = 0.0; n = 0
with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
    for line in r:
        now = time.monotonic(); gap = max(gap, now - last); last = now; n += 1
print(json.dumps({"chunks": n, "max_gap_s": gap}))
"""
