"""Per-engine string dictionaries: each distinct value of a low-cardinality column gets an
int32 code once, at decode, and keeps it for the engine's life.

Tenant, app, model, provider and the other label columns repeat the same few strings
millions of times. Decoding hands them over as codes (:class:`Interner.encode`) next to the
usual object arrays; the engine groups and aggregates on the codes, and the ClickHouse sink
turns codes plus the dictionary into Arrow dictionary arrays (:class:`Coded`) without
reading one Python string per row, which was the largest part of a flush that needs the
GIL. A code is only meaningful with its interner: codes of two engines never mix.

Memory: an interner holds every distinct value it has seen (a tenant id is up to 128
characters), e.g. about 20 MB for 100,000 tenants in each of a few columns.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pyarrow is the sink's business: the engine alone never imports it
    import pyarrow as pa

#: the columns of a call event decoded into codes (every one also stays an object array)
INTERNED = (
    "tenant_id",
    "app",
    "provider",
    "model",
    "served_model",
    "prompt_id",
    "prompt_version",
    "route_tier",
    "embedding_model",
    "index_version",
)


class Interner:
    """Codes for the distinct strings of one column; code 0 is ``""``.

    Appends only, so a code handed out stays valid; safe to read (``values``, ``arrow``)
    from a flush thread while the engine's thread appends.
    """

    def __init__(self) -> None:
        self._index: dict[str, int] = {"": 0}  # its length is the number of values
        self._array = np.empty(16, dtype=object)  # values, with spare room to grow into
        self._array[0] = ""
        self._arrow: tuple[int, pa.Array] | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._index)

    def encode(self, values: np.ndarray) -> np.ndarray:
        """int32[n] codes of ``values`` (object[n] of ``str``), new strings added."""
        if len(values) == 0:
            return np.zeros(0, dtype=np.int32)
        # factorising in C first leaves one dict lookup per distinct value, not per row
        local, uniques = pd.factorize(values, sort=False)
        mapping = np.fromiter(map(self._code, uniques), dtype=np.int32, count=len(uniques))
        return mapping[local]

    def _code(self, value: str) -> int:
        code = self._index.get(value)
        if code is None:
            code = len(self._index)
            if code >= len(self._array):  # doubling keeps appends amortised O(1)
                grown = np.empty(2 * len(self._array), dtype=object)
                grown[:code] = self._array[:code]
                self._array = grown
            self._array[code] = value  # before the index: a reader's length covers it
            self._index[value] = code
        return code

    def values(self, codes: np.ndarray) -> np.ndarray:
        """object[n] strings of int32[n] ``codes``."""
        return self._array[codes]

    def arrow(self, size: int) -> pa.Array:
        """The first ``size`` values as an Arrow string array (cached until more are asked)."""
        import pyarrow as pa  # noqa: PLC0415 - see the TYPE_CHECKING import

        with self._lock:
            cached = self._arrow
            if cached is None:
                cached = (size, pa.array(self._array[:size], type=pa.string()))
            elif cached[0] < size:  # only the new values are converted
                more = pa.array(self._array[cached[0] : size], type=pa.string())
                cached = (size, pa.concat_arrays([cached[1], more]))
            self._arrow = cached
        return cached[1] if cached[0] == size else cached[1].slice(0, size)


@dataclass(frozen=True)
class Coded:
    """A string column as codes into an interner: what the sink makes a dictionary of.

    ``codes`` int32[n]; ``size`` = the interner's length when the codes were made (every
    code is below it).
    """

    codes: np.ndarray
    interner: Interner
    size: int

    @classmethod
    def of(cls, codes: np.ndarray, interner: Interner) -> Coded:
        return cls(np.asarray(codes, dtype=np.int32), interner, len(interner))

    def __len__(self) -> int:
        return len(self.codes)

    def strings(self) -> np.ndarray:
        """object[n] of the values."""
        return self.interner.values(self.codes)


class Interners:
    """One :class:`Interner` per column name (created on first use)."""

    def __init__(self) -> None:
        self._by_name: dict[str, Interner] = {}

    def __getitem__(self, name: str) -> Interner:
        interner = self._by_name.get(name)
        if interner is None:
            interner = self._by_name[name] = Interner()
        return interner

    def sizes(self) -> dict[str, int]:
        """Distinct values per column (for metrics and tests)."""
        return {name: len(i) for name, i in self._by_name.items()}
