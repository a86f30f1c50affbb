"""A JSONL line of millions of empty lists (25 times its size once decoded) is refused by counting
its brackets, before anything is decoded (#24 item 7)."""

from __future__ import annotations

import json
import tracemalloc

from vrollout.inputs.trajectories import MAX_LINE_CONTAINERS, LineError, decode_line


def test_a_line_of_empty_lists_is_refused_before_it_is_decoded():
    raw = b"[" + b"[]," * 2_000_000 + b"[]]"  # 6 MB, under the default line limit
    tracemalloc.start()
    found = decode_line(7, raw, 8 * 2**20)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert isinstance(found, LineError) and found.line == 7
    assert f"over the limit of {MAX_LINE_CONTAINERS}" in found.error
    assert peak < 2 * len(raw)  # decoded, it would be about 25 times


def test_a_real_line_with_many_messages_is_decoded():
    messages = [{"role": "user" if i % 2 else "assistant", "content": f"turn {i} [x]"} for i in range(5_000)]
    raw = json.dumps({"messages": messages}).encode()
    assert decode_line(1, raw, None) == {"messages": messages}
