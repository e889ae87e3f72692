"""Every environment variable, parsed once: values, defaults, one-line errors, the README table."""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from click.testing import CliRunner

from spine_pipeline import settings as settings_module
from spine_pipeline.settings import VARIABLES, ConfigurationError, Settings

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "spine_pipeline"


class Case(NamedTuple):
    name: str
    good: str
    field: str
    parsed: object
    bad: str
    extra: Mapping[str, str] = {}  # other variables the good and the bad value need
    echoed: bool = True  # the bad value appears in the message (never for the secret)


CASES = [
    Case(
        "SPINE_API_KEY",
        " sk_spine_abc123 ",
        "api_key",
        "sk_spine_abc123",
        "sk_spine_ab c123",
        echoed=False,
    ),
    Case(
        "SPINE_BASE_URL", "http://127.0.0.1:8765/", "base_url", "http://127.0.0.1:8765/", "ftp://x"
    ),
    Case(
        "SPINE_ARCHIVE_URI",
        "s3://bucket/spine",
        "archive_uri",
        "s3://bucket/spine",
        "gs://bucket/x",
    ),
    Case("SPINE_AUDIT_DB", "/srv/audit.duckdb", "audit_db", "/srv/audit.duckdb", "audit\n.duckdb"),
    Case("SPINE_CATALOG", "conf/requests.yaml", "catalog_path", "conf/requests.yaml", "a\tb\x07"),
    Case("SPINE_ARCHIVE_BATCH_SIZE", "7", "archive_batch_size", 7, "0"),
    Case("SPINE_POLL_BUDGET_SECONDS", "2.5", "poll_budget_seconds", 2.5, "0"),
    Case("SPINE_POLL_MIN_INTERVAL_SECONDS", "0", "poll_min_interval_seconds", 0.0, "-1"),
    Case("SPINE_POLL_MAX_INTERVAL_SECONDS", "30", "poll_max_interval_seconds", 30.0, "soon"),
    Case("SPINE_POLL_REREQUEST_SECONDS", "60", "poll_rerequest_seconds", 60.0, "nan"),
    Case("SPINE_AUDIT_RETRY_SECONDS", "0", "audit_retry_seconds", 0.0, "-5"),
    Case("SPINE_AUDIT_MEMORY_LIMIT", "512MiB", "audit_memory_limit", 512 << 20, "1MB"),
    Case(
        "SPINE_AUDIT_CATALOG",
        " ducklake:/srv/audit/meta.ducklake ",
        "audit_catalog",
        "ducklake:/srv/audit/meta.ducklake",
        "postgres:dbname=audit password=hunter2",
        echoed=False,
    ),
    Case("SPINE_RUN_FETCH_DEADLINE_SECONDS", "2.5", "run_fetch_deadline_seconds", 2.5, "0"),
    Case("SPINE_CREDIT_BUDGET_DAILY", "1000", "credit_budget_daily", 1000.0, "lots"),
    Case("SPINE_CREDIT_BUDGET_MONTHLY", "2.5e4", "credit_budget_monthly", 25000.0, "0"),
    Case("SPINE_ARTIFACT_MAX_BYTES", "1048576", "artifact_max_bytes", 1048576, "2GB"),
    Case(
        "SPINE_ARTIFACT_ALLOWED_HOSTS",
        "minio.internal:9000, Files.Corp,[::1]:8080",
        "artifact_allowed_hosts",
        ("minio.internal:9000", "files.corp", "[::1]:8080"),
        "https://minio.internal",
    ),
    Case("SPINE_S3_SSE", "aws:kms", "s3_sse", "aws:kms", "aes256"),
    Case(
        "SPINE_S3_SSE_KMS_KEY_ID",
        "alias/archive",
        "s3_sse_kms_key_id",
        "alias/archive",
        "alias/archive",
        extra={"SPINE_S3_SSE": "aws:kms"},
        echoed=False,
    ),
    Case("SPINE_S3_OBJECT_LOCK_DAYS", "30", "s3_object_lock_days", 30, "1.5"),
    Case(
        "SPINE_SIGNING_KEY",
        " /etc/spine/spine-signing.pem ",
        "signing_key",
        "/etc/spine/spine-signing.pem",
        "/etc/spine/signing\x07.pem",
        echoed=False,
    ),
    Case(
        "SPINE_VERIFY_KEY",
        "/etc/spine/old.pem, /etc/spine/new.pem",
        "verify_key",
        "/etc/spine/old.pem, /etc/spine/new.pem",
        "/etc/spine/old\x07.pem",
    ),
    Case(
        "SPINE_WITNESS_URI",
        "s3://witness-bucket/spine, /mnt/witness",
        "witness_uris",
        ("s3://witness-bucket/spine", "/mnt/witness"),
        "s3://witness-bucket,,/mnt/witness",
    ),
    Case(
        "SPINE_WEBHOOK_SECRET",
        " whsec_old_1, whsec_new_2 ",
        "webhook_secrets",
        ("whsec_old_1", "whsec_new_2"),
        "whsec_old_1,,whsec new",
        echoed=False,
    ),
    Case("SPINE_TRACK_FROM_WEBHOOKS", "1", "track_from_webhooks", True, "yes"),
    Case(
        "SPINE_ALERT_WEBHOOK_URL",
        " https://hooks.slack.com/services/T0/B0/tok3n ",
        "alert_webhook_url",
        "https://hooks.slack.com/services/T0/B0/tok3n",
        "hooks.slack.com/services/T0/B0/tok3n",
        echoed=False,
    ),
    Case(
        "AWS_ENDPOINT_URL_S3",
        "http://127.0.0.1:9000",
        "s3_endpoint_url",
        "http://127.0.0.1:9000",
        "127.0.0.1:9000",
    ),
    Case(
        "AWS_ENDPOINT_URL",
        "https://minio.internal",
        "s3_endpoint_url",
        "https://minio.internal",
        "https://",
    ),
    Case("AWS_REGION", "eu-west-1", "aws_region", "eu-west-1", "eu west 1"),
    Case("AWS_DEFAULT_REGION", "auto", "aws_region", "auto", "eu/west"),
    Case("DAGSTER_HOME", "/srv/dagster", "dagster_home", "/srv/dagster", "dagster\nhome"),
]


def _case_id(case: Case) -> str:
    return case.name


def test_every_variable_has_a_case() -> None:
    assert sorted(c.name for c in CASES) == sorted(VARIABLES)
    assert len(set(VARIABLES)) == len(VARIABLES)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_a_good_value_is_parsed(case: Case) -> None:
    settings = Settings.from_env({**case.extra, case.name: case.good})
    assert getattr(settings, case.field) == case.parsed
    assert type(getattr(settings, case.field)) is type(case.parsed)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_a_bad_value_is_a_one_line_error_naming_the_variable(case: Case) -> None:
    env = {**case.extra, case.name: case.bad}
    if case.name == "SPINE_S3_SSE_KMS_KEY_ID":
        env.pop("SPINE_S3_SSE")  # a key id without SSE-KMS is the bad combination
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(env)
    message = str(caught.value)
    assert message.startswith(case.name), message
    assert "\n" not in message and "\r" not in message
    assert isinstance(caught.value, ValueError)  # callers that caught ValueError still do
    if case.echoed:
        assert repr(case.bad.strip()) in message
    else:
        assert case.bad not in message and case.bad.strip() not in message


def test_unset_and_blank_variables_take_the_defaults() -> None:
    assert Settings.from_env({}) == Settings()
    assert Settings.from_env(dict.fromkeys(VARIABLES, "  ")) == Settings()
    defaults = Settings()
    assert defaults.api_key is None
    assert defaults.base_url == "https://api.getspine.ai"
    assert (defaults.archive_uri, defaults.audit_db, defaults.catalog_path) == (
        "data/archive",
        "data/audit.duckdb",
        "data/requests.yaml",
    )
    assert defaults.archive_batch_size == 100
    assert defaults.poll_budget_seconds == 40.0
    assert (defaults.poll_min_interval_seconds, defaults.poll_max_interval_seconds) == (15.0, 60.0)
    assert defaults.poll_rerequest_seconds == 600.0
    assert defaults.audit_retry_seconds == 300.0


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().archive_uri = "elsewhere"  # type: ignore[misc]


def test_from_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPINE_ARCHIVE_BATCH_SIZE", "3")
    assert Settings.from_env().archive_batch_size == 3
    monkeypatch.setenv("SPINE_ARCHIVE_BATCH_SIZE", "4")  # resolved per call, never cached
    assert Settings.from_env().archive_batch_size == 4


class _Recording(Mapping[str, str]):
    def __init__(self) -> None:
        self.asked: list[str] = []

    def __getitem__(self, key: str) -> str:
        self.asked.append(key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.append(key)
        return default

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def test_from_env_reads_exactly_the_variables_it_declares() -> None:
    environ = _Recording()
    Settings.from_env(environ)
    assert sorted(set(environ.asked)) == sorted(VARIABLES)


def test_specific_variables_win_over_generic_ones() -> None:
    env = {"AWS_ENDPOINT_URL": "http://generic:1", "AWS_ENDPOINT_URL_S3": "http://s3:2"}
    assert Settings.from_env(env).s3_endpoint_url == "http://s3:2"
    env = {"AWS_DEFAULT_REGION": "eu-west-1", "AWS_REGION": "us-west-2"}
    assert Settings.from_env(env).aws_region == "us-west-2"


def test_poll_interval_bounds_must_be_ordered() -> None:
    env = {"SPINE_POLL_MIN_INTERVAL_SECONDS": "90", "SPINE_POLL_MAX_INTERVAL_SECONDS": "30"}
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(env)
    assert "SPINE_POLL_MIN_INTERVAL_SECONDS" in str(caught.value)
    assert "SPINE_POLL_MAX_INTERVAL_SECONDS" in str(caught.value)


@pytest.mark.parametrize(
    "raw",
    ["sk_spine abc", "sk_spine_abc\nX-Injected: 1", "sk_spine_\u00e9t\u00e9", "sk_spine_\x00nul"],
)
def test_the_api_key_is_never_echoed(raw: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({"SPINE_API_KEY": raw})
    message = str(caught.value)
    assert message.startswith("SPINE_API_KEY is malformed")
    for part in raw.split():
        assert part not in message
    assert raw not in repr(caught.value)


def test_the_api_key_is_not_in_the_settings_repr() -> None:
    key = "sk_spine_REPRCANARY0123"
    settings = Settings.from_env({"SPINE_API_KEY": key})
    assert settings.api_key == key
    assert key not in repr(settings) and key not in str(settings)


def test_signing_keys_as_pem_text_and_never_echoed() -> None:
    from spine_pipeline.archive.signing import generate_keypair

    private_pem, public_pem = (pem.decode() for pem in generate_keypair())
    body = private_pem.splitlines()[1]
    settings = Settings.from_env({"SPINE_SIGNING_KEY": private_pem, "SPINE_VERIFY_KEY": public_pem})
    assert settings.signing_key == private_pem.strip()
    assert settings.verify_key == public_pem.strip()
    assert body not in repr(settings) and body not in str(settings)
    cut = private_pem[: len(private_pem) // 2]  # a PEM text without its END line
    for env in (
        {"SPINE_SIGNING_KEY": cut},
        {"SPINE_SIGNING_KEY": public_pem},
        {"SPINE_VERIFY_KEY": private_pem},  # the private key where only public ones go
    ):
        with pytest.raises(ConfigurationError) as caught:
            Settings.from_env(env)
        message = str(caught.value)
        assert message.startswith(next(iter(env))) and "\n" not in message
        assert body not in message and body[:12] not in message


def test_url_credentials_are_not_echoed() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({"AWS_ENDPOINT_URL_S3": "ftp://user:pw-canary@host:21/"})
    assert "pw-canary" not in str(caught.value)
    assert "AWS_ENDPOINT_URL_S3" in str(caught.value)
    ok = "http://user:pw-canary@127.0.0.1:9000"  # userinfo in a valid URL is allowed
    assert Settings.from_env({"AWS_ENDPOINT_URL_S3": ok}).s3_endpoint_url == ok


def test_long_values_are_shortened_in_messages() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({"SPINE_ARCHIVE_BATCH_SIZE": "9" * 500 + "x"})
    assert len(str(caught.value)) < 200


# -- the module is a leaf, and the only reader of the environment ---------------------------


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


def test_settings_is_a_leaf_module() -> None:
    imported = _imports(Path(settings_module.__file__))
    assert not [n for n in imported if n.startswith(("spine_pipeline", "."))], imported


def _environment_reads(path: Path) -> list[int]:
    """Lines that read `os.environ[...]`, `os.environ.get(...)` or call `os.getenv(...)`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))

    def is_environ(node: ast.AST) -> bool:
        return (
            isinstance(node, ast.Attribute)
            and node.attr == "environ"
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
        )

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            if is_environ(node.value):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            func = node.func
            if func.attr in ("get", "getenv") and (
                is_environ(func.value)
                or (func.attr == "getenv" and isinstance(func.value, ast.Name))
            ):
                lines.append(node.lineno)
    return lines


def test_no_module_but_settings_reads_the_environment() -> None:
    """The soak harness is a test driver with its own knobs; everything else goes through here."""
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "settings.py" or rel.startswith("soak/"):
            continue
        if found := _environment_reads(path):
            offenders[rel] = found
    assert offenders == {}


# -- the README's configuration table ---------------------------------------------------------


def _readme_variables() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert rows[0].replace(" ", "") == "|variable|meaning|default|"
    names: list[str] = []
    for row in rows[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 3 and all(cells), row
        found = re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[0])
        assert found, row
        names.extend(found)
    return names


def test_the_readme_table_lists_exactly_the_known_variables() -> None:
    names = _readme_variables()
    assert len(names) == len(set(names)), names
    assert sorted(names) == sorted(VARIABLES)


# -- the CLI: a bad setting is a one-line error with exit code 2 -----------------------------


def test_cli_reports_a_bad_setting_on_one_line_with_exit_2(tmp_path: Path) -> None:
    from spine_pipeline.cli import main

    env = {
        "SPINE_ARCHIVE_URI": str(tmp_path / "archive"),
        "SPINE_AUDIT_DB": str(tmp_path / "audit.duckdb"),
        "SPINE_ARCHIVE_BATCH_SIZE": "lots",
    }
    result = CliRunner().invoke(main, ["status"], env=env)
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        "error: SPINE_ARCHIVE_BATCH_SIZE must be a whole number at least 1, got 'lots'"
    ]
    key = "sk_spine_CLICANARY 0123"
    result = CliRunner().invoke(main, ["status"], env={**env, "SPINE_API_KEY": key})
    assert result.exit_code == 2
    assert "SPINE_API_KEY is malformed" in result.stderr and "CLICANARY" not in result.output
    result = CliRunner().invoke(main, ["sql", "select 1"], env={"SPINE_POLL_BUDGET_SECONDS": "-1"})
    assert result.exit_code == 2 and "SPINE_POLL_BUDGET_SECONDS" in result.stderr
