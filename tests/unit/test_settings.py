"""Settings from the environment: a mistyped ``LLMOPS_`` variable is an error naming the
closest valid one, every problem of a bad configuration is listed, and ``LLMOPS_LOG_LEVEL``
sets the level of the project's loggers."""

from __future__ import annotations

import argparse
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
    assert "LLMOPS_KAFKA_CACHE" in OTHER_ENV
    assert unknown_env() == []
    assert load_settings({}).group == "llmops-stream"
    assert not set(OTHER_ENV) & {f"LLMOPS_{f.upper()}" for f in Settings.model_fields}


def test_agents_settings_and_their_env_twins(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings({})
    assert (settings.agents_host, settings.agents_port) == ("127.0.0.1", 6066)  # SPEC §4
    assert settings.agents_token.get_secret_value() == ""  # no token: open
    assert (settings.webhooks, settings.refresh_dir, settings.refresh_max) == (None, None, 10_000)
    env = {
        "LLMOPS_AGENTS_HOST": "0.0.0.0",  # noqa: S104 - a value, nothing listens here
        "LLMOPS_AGENTS_PORT": "7000",
        "LLMOPS_AGENTS_TOKEN": "hunter2-gw",
        "LLMOPS_AGENTS_APP_ID": "agents-eu",
        "LLMOPS_WEBHOOKS": "/etc/hooks.json",
        "LLMOPS_REFRESH_DIR": "/var/refresh",
        "LLMOPS_REFRESH_MAX": "50",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert unknown_env() == []
    settings = load_settings({})
    assert settings.agents_port == 7000 and settings.agents_app_id == "agents-eu"
    assert str(settings.webhooks) == "/etc/hooks.json" and settings.refresh_max == 50
    assert "hunter2" not in repr(settings)  # a secret
    monkeypatch.setenv("LLMOPS_AGENT_PORT", "7000")
    monkeypatch.setenv("LLMOPS_AGENTS_APP_ID", "agents eu")
    assert problems_of() == [
        "2 configuration problems:",
        "  - unknown setting LLMOPS_AGENT_PORT (did you mean LLMOPS_AGENTS_PORT?)",
        "  - bad setting LLMOPS_AGENTS_APP_ID: Input should be 1 to 200 letters, digits, '.', "
        "'_' or '-' (it prefixes the agents' Kafka topic names) (got 'agents eu')",
    ]


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


def test_otel_span_input_settings_and_their_env_twins(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings({})
    assert (settings.otlp_topic, settings.otlp_encoding, settings.tenant_attribute) == (
        "",  # off
        "otlp_proto",  # the Collector's Kafka exporter default
        "tenant.id",
    )
    monkeypatch.setenv("LLMOPS_OTLP_TOPIC", "otlp_spans")
    monkeypatch.setenv("LLMOPS_OTLP_ENCODING", "otlp_json")
    monkeypatch.setenv("LLMOPS_TENANT_ATTRIBUTE", "org.id")
    assert unknown_env() == []
    settings = load_settings({})
    assert (settings.otlp_topic, settings.otlp_encoding, settings.tenant_attribute) == (
        "otlp_spans",
        "otlp_json",
        "org.id",
    )
    monkeypatch.setenv("LLMOPS_OTLP_ENCODEING", "otlp_json")
    assert problems_of() == [
        "unknown setting LLMOPS_OTLP_ENCODEING (did you mean LLMOPS_OTLP_ENCODING?)"
    ]


def test_run_flags_set_the_otel_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMOPS_TENANT_ATTRIBUTE", "from.env")
    args = build_parser().parse_args(
        ["run", "--otlp-topic", "traces.genai", "--otlp-encoding", "otlp_json",
         "--tenant-attribute", "customer.id"]
    )  # fmt: skip
    settings = _settings(args)
    assert settings.otlp_topic == "traces.genai"
    assert settings.otlp_encoding == "otlp_json"
    assert settings.tenant_attribute == "customer.id"  # the flag beats its env twin
    replay = _settings(build_parser().parse_args(["replay", "f.jsonl"]))
    assert replay.tenant_attribute == "from.env"
    assert build_parser().parse_args(["replay", "f"]).format == "jsonl"


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (["--otlp-encoding", "protobuf"],
         "bad setting --otlp-encoding (env twin LLMOPS_OTLP_ENCODING): Input should be "
         "'otlp_proto' or 'otlp_json' (got 'protobuf')"),
        (["--otlp-topic", "genai spans"],
         "bad setting --otlp-topic (env twin LLMOPS_OTLP_TOPIC): Input should be a Kafka topic "
         "name: 1 to 249 letters, digits, '.', '_' or '-' (empty = off) (got 'genai spans')"),
        (["--otlp-topic", "llm.calls"],
         "bad configuration: the OTel span topic (LLMOPS_OTLP_TOPIC, --otlp-topic) must differ "
         "from the call event topic (LLMOPS_TOPIC, --topic): both are 'llm.calls'"),
        (["--tenant-attribute", ""],
         "bad setting --tenant-attribute (env twin LLMOPS_TENANT_ATTRIBUTE): String should have "
         "at least 1 character (got '')"),
    ],
)  # fmt: skip
def test_bad_otel_settings_are_one_line_each(flags: list[str], problem: str) -> None:
    with pytest.raises(ConfigError) as exc:
        _settings(build_parser().parse_args(["run", *flags]))
    assert str(exc.value).splitlines() == [problem]


def test_cli_bad_otlp_encoding_exits_2_without_traceback() -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("LLMOPS_")}
    env |= {"LLMOPS_OTLP_ENCODING": "json", "COLUMNS": "40"}
    run = subprocess.run(
        [sys.executable, "-m", "llmops_stream.stream.cli", "run", "--otlp-topic", "spans"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert run.stderr.splitlines() == [
        "error: bad setting LLMOPS_OTLP_ENCODING: Input should be 'otlp_proto' or 'otlp_json' "
        "(got 'json')"
    ]


def test_help_explains_the_otel_flags() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    run_help = " ".join(sub.choices["run"].format_help().split())
    expected = (
        "--otlp-topic TOPIC", "--otlp-encoding otlp_proto|otlp_json", "--tenant-attribute NAME",
        "LLMOPS_OTLP_TOPIC", "LLMOPS_OTLP_ENCODING", "LLMOPS_TENANT_ATTRIBUTE",
        "default empty = off", "default tenant.id",
    )  # fmt: skip
    for text in expected:
        assert text in run_help, text
    replay_help = " ".join(sub.choices["replay"].format_help().split())
    assert "--format jsonl|otlp-json" in replay_help and "--tenant-attribute NAME" in replay_help


def test_otlp_encoding_choices_are_the_converters() -> None:
    from typing import get_args

    from llmops_stream.stream.core.otlp import OTLP_ENCODINGS

    assert get_args(Settings.model_fields["otlp_encoding"].annotation) == OTLP_ENCODINGS
