"""Batch and chunk sizes that fit the device: the settings' values on a CPU (tuned on a 2-core
machine, benchmarks/batch.py), larger where a CUDA device has the free memory for them.

Pure arithmetic over a free-memory figure (`continuations.free_memory`, from
`torch.cuda.mem_get_info`), so that it is tested with given numbers; a value the user set
explicitly is never changed.
"""

from __future__ import annotations

from dataclasses import dataclass

SHARE = 0.25  # of the free memory, what one metrics chunk or one padded batch may take
MAX_CHUNK = 4096  # positions per metrics chunk: beyond it a GPU gains nothing
MAX_BATCH_TOKENS = 65536
METRIC_ROWS = 8  # float32 (vocab,) rows per position in a metrics chunk: 2 logits + 6 buffers
# Bytes per padded token of a forward pass, in units of hidden size x element size: the
# residual stream, attention's q/k/v/out, the MLP's intermediate (about 3.5 x hidden, twice)
# and the norms, with room.
ACTIVATION_WIDTHS = 24


@dataclass(frozen=True)
class Sizes:
    chunk_size: int  # positions per metrics chunk
    batch_tokens: int  # padded tokens per batch of short lines
    batch_max_sequence: int  # longer context + response sequences run one at a time


def fitted_sizes(
    defaults: Sizes,
    free_bytes: int | None,
    vocab: int,
    hidden: int,
    element_bytes: int,
    explicit: frozenset[str] = frozenset(),
) -> Sizes:
    """`defaults` where `free_bytes` is None (not CUDA), else each size as large as SHARE of the
    free memory allows (never below its default); the names in `explicit` stay as given."""
    if free_bytes is None:
        return defaults
    budget = int(free_bytes * SHARE)
    chunk = min(MAX_CHUNK, budget // (METRIC_ROWS * vocab * 4))
    tokens = min(MAX_BATCH_TOKENS, budget // (ACTIVATION_WIDTHS * hidden * element_bytes))
    # On a GPU a padded pass pays at any length that fits four lines to a batch.
    longest = tokens // 4
    fitted = Sizes(
        chunk_size=max(defaults.chunk_size, chunk),
        batch_tokens=max(defaults.batch_tokens, tokens),
        batch_max_sequence=max(defaults.batch_max_sequence, longest),
    )
    return Sizes(
        **{
            name: getattr(defaults if name in explicit else fitted, name)
            for name in Sizes.__dataclass_fields__
        }
    )
