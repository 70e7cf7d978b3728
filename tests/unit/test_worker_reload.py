"""The worker hot-reloads a changed eval-set file into every partition's engine."""

from pathlib import Path

from aiokafka import TopicPartition

from llmops_stream.stream.clickhouse.sink import ClickHouseSink
from llmops_stream.stream.core.engine import Engine, EngineConfig
from llmops_stream.stream.core.evalset import EvalSetWatcher
from llmops_stream.stream.core.pricing import PriceTable
from llmops_stream.stream.dev.synth import generate_eval_set, write_jsonl
from llmops_stream.stream.kafka.worker import PartitionRun, Worker
from llmops_stream.stream.runtime.settings import Settings

MODEL = "m"


def test_changed_eval_set_reaches_every_partition(tmp_path: Path) -> None:
    path = tmp_path / "eval.jsonl"
    write_jsonl(path, generate_eval_set(n=50, dim=16, seed=1, embedding_model=MODEL))
    watcher = EvalSetWatcher(path)
    first = watcher.current[MODEL].version
    config = EngineConfig(prices=PriceTable(), eval_sets=watcher.current)
    worker = Worker(Settings(eval_set=path), lambda: config, None, eval_watcher=watcher)
    for p in range(2):
        worker.runs[TopicPartition("t", p)] = PartitionRun(
            tp=TopicPartition("t", p),
            engine=Engine(config),
            committed=0,
            seg_start=0,
            next_offset=0,
            forced_end=None,
            sink=ClickHouseSink(None, "db"),
        )
    write_jsonl(path, generate_eval_set(n=80, dim=16, seed=2, embedding_model=MODEL))
    worker._last_reload_check = 0.0
    worker._reload_eval_sets()
    for run in worker.runs.values():
        es = run.engine.config.eval_sets[MODEL]
        assert es.version != first and es.size == 80
        assert run.engine.scorers[MODEL].evalset is es
