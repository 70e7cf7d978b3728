"""Eval-set refresh: the candidates of ``llm.eval.candidates`` as JSONL files to be labelled.

Job
---
The worker offers a sample of the inputs the eval set does not cover on
``llm.eval.candidates`` (see ``stream/kafka/records.py`` ``candidate_records``). An agent
collects them into a changelog-backed table, deduplicated by embedding content (and by id:
the eval-set loader refuses a repeated id) and capped per embedding model at
``LLMOPS_REFRESH_MAX`` (the newest win: the oldest are dropped first). A timer rewrites the
file of every model whose candidates changed, in ``--refresh-dir`` (``LLMOPS_REFRESH_DIR``):
one file per embedding model, ``<model>.jsonl`` (characters other than letters, digits,
``.``, ``_`` and ``-`` become ``_``, with a short hash of the name added then), one
``{"id", "embedding", "embedding_model"}`` object per line: the eval-set format, the
embedding encoded as in call events (base64 of little-endian float32). ``id`` is the
candidate's ``event_id``, so a labeller finds the call in ClickHouse (``llm_calls``,
``llm_eval_candidates``). A file is written whole to a temporary file and renamed over the
old one, so a reader never sees half a file.

A candidate that the eval-set loader would refuse (bad base64, NaN or infinity, the zero
vector, a dimension other than the model's first candidate's) is logged and skipped.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import faust
import msgspec
import numpy as np
import orjson

from llmops_stream.stream.core.evalset import decode_embedding

log = logging.getLogger(__name__)

TABLE = "eval-candidates"
_SEP = b"\x1f"  # between the model and the content hash in a table key
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class Candidate(msgspec.Struct):
    """The fields of a ``llm.eval.candidates`` record that the refresh file needs."""

    event_id: str
    embedding_model: str
    embedding: str


_decode_candidate = msgspec.json.Decoder(Candidate).decode


def file_name(model: str) -> str:
    """The refresh file of an embedding model: ``<model>.jsonl``, made safe for a file
    system (and distinct: a name that had to change gets a hash of the original)."""
    safe = _UNSAFE.sub("_", model).lstrip(".") or "_"
    if safe != model:
        safe += "-" + hashlib.sha256(model.encode()).hexdigest()[:8]
    return f"{safe}.jsonl"


def write_atomic(path: Path, lines: list[bytes]) -> None:
    """Write ``lines`` (newline-terminated) to ``path`` through a temporary file and a
    rename, so that readers see the old file or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(b"".join(line + b"\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    # the rename itself is durable only once the directory is synced
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ModelSet:
    """One model's candidates in arrival order (table key → id), for the cap and the ids."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.order: OrderedDict[bytes, str] = OrderedDict()
        self.ids: set[str] = set()

    def add(self, key: bytes, item_id: str) -> None:
        self.order[key] = item_id
        self.ids.add(item_id)

    def pop_oldest(self) -> bytes:
        key, item_id = self.order.popitem(last=False)
        self.ids.discard(item_id)
        return key


class RefreshSet:
    """The candidate table, the agent that fills it and the timer that writes the files."""

    def __init__(
        self,
        app: faust.App,
        topic: faust.TopicT,
        directory: Path,
        *,
        max_per_model: int,
        interval_s: float,
    ) -> None:
        self.directory = directory
        self.max_per_model = max_per_model
        self.models: dict[str, ModelSet] = {}
        self.dirty: set[str] = set()
        self.skipped = 0
        self.duplicates = 0
        self.written = 0
        # use_partitioner: entries are keyed by content, not by the record's tenant key, so
        # their changelog partition must follow the key (a repeat lands on the same one).
        self.table = app.Table(
            TABLE,
            key_type=bytes,
            value_type=bytes,
            use_partitioner=True,
            on_recover=self._on_recover,
            help="eval-set refresh lines by embedding model and content hash",
        )
        app.agent(topic, name="eval-candidates")(self._collect)
        app.timer(interval_s)(self._write_dirty)

    async def _on_recover(self) -> None:
        self.models.clear()
        evicted = []
        for key, line in list(self.table.items()):
            obj = orjson.loads(line)
            model = obj["embedding_model"]
            ms = self.models.get(model)
            if ms is None:
                ms = self.models[model] = ModelSet(len(decode_embedding(obj["embedding"])))
            ms.add(key, obj["id"])
            while len(ms.order) > self.max_per_model:  # the cap was lowered since
                evicted.append(ms.pop_oldest())
        for key in evicted:
            self.table.pop(key, None)
        self.dirty.update(self.models)  # the files may be older than the table

    async def _collect(self, stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            if event.value is not None:
                self.add(event.value)

    def add(self, value: bytes) -> bool:
        """Take one candidate record; False if it was skipped or a duplicate."""
        try:
            cand = _decode_candidate(value)
            vector = decode_embedding(cand.embedding)
        except ValueError as exc:  # msgspec.DecodeError is a ValueError too
            return self._skip("unreadable", str(exc))
        if not np.isfinite(vector).all() or not vector.any():
            return self._skip("not_finite_or_zero", cand.event_id)
        model = cand.embedding_model
        ms = self.models.get(model)
        if ms is None:
            ms = self.models[model] = ModelSet(vector.shape[0])
        elif vector.shape[0] != ms.dim:
            return self._skip("dimension", f"{cand.event_id}: {vector.shape[0]} != {ms.dim}")
        key = model.encode() + _SEP + hashlib.sha256(vector.tobytes()).hexdigest()[:32].encode()
        if key in ms.order or cand.event_id in ms.ids:
            self.duplicates += 1
            return False
        line = orjson.dumps(
            {"id": cand.event_id, "embedding": cand.embedding, "embedding_model": model}
        )
        self.table[key] = line
        ms.add(key, cand.event_id)
        while len(ms.order) > self.max_per_model:
            self.table.pop(ms.pop_oldest(), None)
        self.dirty.add(model)
        return True

    def _skip(self, reason: str, detail: str) -> bool:
        self.skipped += 1
        log.warning({"event": "eval_candidate_skipped", "reason": reason, "detail": detail})
        return False

    async def _write_dirty(self, _app: faust.App) -> None:
        # faust passes the app to a timer function that takes an argument
        for model in sorted(self.dirty):
            ms = self.models.get(model)
            if ms is None:
                self.dirty.discard(model)
                continue
            # a snapshot: candidates arriving during the write mark the model dirty again
            self.dirty.discard(model)
            lines = [self.table[key] for key in ms.order]
            path = self.directory / file_name(model)
            try:
                # in a thread: a 10,000-line file is ~20 MB, too long to block the web view
                await asyncio.to_thread(write_atomic, path, lines)
            except OSError as exc:
                log.error({"event": "refresh_write_failed", "path": str(path), "error": str(exc)})
                self.dirty.add(model)  # tried again at the next tick
                continue
            self.written += 1
            log.info({"event": "refresh_written", "path": str(path), "candidates": len(lines)})

    def health(self) -> dict[str, Any]:
        return {
            "models": {model: len(ms.order) for model, ms in sorted(self.models.items())},
            "duplicates": self.duplicates,
            "skipped": self.skipped,
        }
