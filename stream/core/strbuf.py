"""Many Python strings as one UTF-8 byte buffer plus offsets: the layout numba kernels read.

String ``i`` is ``buf[offsets[i]:offsets[i+1]]`` (uint8[total], int64[n+1]). Joining is
done once in C; per-string byte lengths are only computed one by one when some string is
not ASCII (byte and character lengths then differ).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def utf8_buffer(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(uint8[total] buffer, int64[n+1] offsets) of ``texts``; raises TypeError on non-str."""
    encoded = "".join(texts).encode("utf-8")
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    if len(encoded) != int(lengths.sum()):
        lengths = np.fromiter((len(t.encode("utf-8")) for t in texts), np.int64, len(texts))
    np.cumsum(lengths, out=offsets[1:])
    return np.frombuffer(encoded, dtype=np.uint8), offsets
