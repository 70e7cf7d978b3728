"""Settings from the environment: a mistyped ``LLMOPS_`` variable is an error naming the
closest valid one, every problem of a bad configuration is listed, and ``LLMOPS_LOG_LEVEL``
sets the level of the project's loggers."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from llmops_stream.stream.cli.main import _settings, build_parser
from llmops_stream.stream.core.errors import ConfigError
from llmops_stream.stream.runtime.logs import set_log_level
from llmops_stream.stream.runtime.settings import OTHER_ENV, Settings, load_settings, unknown_env


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``LLMOPS_`` variable of the caller's environment leaks into these tests."""
    for key in list(os.environ):
        if key.upper().startswith("LLMOPS_"):
            monkeypatch.delenv(key)


@pytest.fixture
def levels() -> Iterator[None]:
    """Restore the log levels the tests change."""
    project, root = logging.getLogger("llmops_stream"), logging.getLogger()
    saved = project.level, root.level
    yield
    project.setLevel(saved[0])
    root.setLevel(saved[1])


def problems_of(overrides: dict[str, object] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_settings(overrides or {})
    return str(exc.value).splitlines()


def test_clean_environment_loads() -> None:
    assert load_settings({}).batch_size == 20_000


def test_mistyped_variable_names_the_closest_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMOPS_BOOTSTRAP_SERVERS", "kafka:9092")
    assert problems_of() == [
        "unknown setting LLMOPS_BOOTSTRAP_SERVERS (did you mean LLMOPS_KAFKA_BOOTSTRAP_SERVERS?)"
    ]
    monkeypatch.delenv("LLMOPS_BOOTSTRAP_SERVERS")
    monkeypatch.setenv("LLMOPS_BATCH_SIZ", "10")
    assert problems_of() == ["unknown setting LLMOPS_BATCH_SIZ (did you mean LLMOPS_BATCH_SIZE?)"]


def test_mistyped_variable_without_a_close_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMOPS_XYZZY", "1")
    # the shared prefix alone does not make a name close
    assert problems_of() == ["unknown setting LLMOPS_XYZZY"]


def test_other_prefixes_are_not_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMOPSX_FOO", "1")
    monkeypatch.setenv("MY_LLMOPS_FOO", "1")
    assert load_settings({}).topic == "llm.calls"


def test_allow_listed_names_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTHER_ENV:
        monkeypatch.setenv(name, "x")
    for name in ("LLMOPS_KAFKA_CACHE", "LLMOPS_AGENTS_HOST", "LLMOPS_WEBHOOKS"):
        assert name in OTHER_ENV
    assert unknown_env() == []
    assert load_settings({}).group == "llmops-stream"
    assert not set(OTHER_ENV) & {f"LLMOPS_{f.upper()}" for f in Settings.model_fields}


def test_every_setting_is_a_known_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMOPS_METRICS_PORT", "0")
    monkeypatch.setenv("llmops_topic", "t")  # pydantic reads names in any case
    assert unknown_env() == []
    assert load_settings({}).topic == "t"


def test_every_problem_is_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMOPS_BOOTSTRAP_SERVERS", "kafka:9092")
    monkeypatch.setenv("LLMOPS_DRIFT_THRESHOLD", "2")
    monkeypatch.setenv("LLMOPS_PARTITIONS", "many")
    monkeypatch.setenv("LLMOPS_KAFKA_SASL_PASSWORD", "hunter2")  # valid, never shown
    lines = problems_of({"batch_size": 0, "topic": None})
    assert lines[0] == "4 configuration problems:"
    assert lines[1:] == [
        "  - unknown setting LLMOPS_BOOTSTRAP_SERVERS "
        "(did you mean LLMOPS_KAFKA_BOOTSTRAP_SERVERS?)",
        "  - bad setting --batch-size (env twin LLMOPS_BATCH_SIZE): "
        "Input should be greater than 0 (got 0)",
        "  - bad setting LLMOPS_DRIFT_THRESHOLD: Input should be less than or equal to 1 (got '2')",
        "  - bad setting LLMOPS_PARTITIONS: Input should be a valid integer, unable to parse "
        "string as an integer (got 'many')",
    ]


def test_cli_prints_every_problem_and_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("LLMOPS_")}
    env |= {"LLMOPS_LOG_LEVL": "INFO", "LLMOPS_BATCH_SIZE": "-1", "COLUMNS": "40"}
    run = subprocess.run(
        [sys.executable, "-m", "llmops_stream.stream.cli", "report", "--database", "x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert run.stderr.splitlines() == [  # one line per problem, however narrow the terminal
        "error: 2 configuration problems:",
        "  - unknown setting LLMOPS_LOG_LEVL (did you mean LLMOPS_LOG_LEVEL?)",
        "  - bad setting LLMOPS_BATCH_SIZE: Input should be greater than 0 (got '-1')",
    ]


@pytest.mark.usefixtures("levels")
@pytest.mark.parametrize("value", ["debug", "Error", " CRITICAL "])
def test_log_level_is_applied(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("LLMOPS_LOG_LEVEL", value)
    settings = _settings(build_parser().parse_args(["report"]))
    level = getattr(logging, value.strip().upper())
    assert settings.log_level == value.strip().upper()
    assert logging.getLogger("llmops_stream").level == level
    assert logging.getLogger("llmops_stream.worker").getEffectiveLevel() == level
    # other libraries follow, but never below WARNING
    assert logging.getLogger().level == max(level, logging.WARNING)


@pytest.mark.usefixtures("levels")
def test_log_level_default_is_the_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    _settings(build_parser().parse_args(["report"]))
    assert logging.getLogger("llmops_stream").level == logging.WARNING
    _settings(build_parser().parse_args(["report"]), log_level="INFO")  # as `run` does
    assert logging.getLogger("llmops_stream").level == logging.INFO
    assert logging.getLogger().level == logging.WARNING
    monkeypatch.setenv("LLMOPS_LOG_LEVEL", "error")  # set explicitly, it wins
    _settings(build_parser().parse_args(["report"]), log_level="INFO")
    assert logging.getLogger("llmops_stream").level == logging.ERROR


def test_bad_log_level_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMOPS_LOG_LEVEL", "verbose")
    assert problems_of() == [
        "bad setting LLMOPS_LOG_LEVEL: Input should be one of DEBUG, INFO, WARNING, ERROR, "
        "CRITICAL, in any case (got 'verbose')"
    ]
    with pytest.raises(ValueError, match="DEBUG, INFO, WARNING, ERROR, CRITICAL"):
        set_log_level("verbose")
