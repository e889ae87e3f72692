"""The request catalog: the shipped file is valid, and every mistake gets one clear line."""

from pathlib import Path

import pytest

from spine_pipeline.catalog import DEFAULT_CATALOG, CatalogError, load_catalog

REPO = Path(__file__).resolve().parents[1]


def test_shipped_catalog_is_valid_and_covers_the_templates():
    entries = load_catalog(REPO / DEFAULT_CATALOG)
    assert len(entries) >= 6
    templates = {e.template for e in entries}
    assert {"report", "slides", "excel", "memo", "deep_research", "auto"} <= templates
    assert any(e.blocks for e in entries)
    assert any(e.agent_instructions for e in entries)
    assert any(e.schedule for e in entries)
    with_file = [e for e in entries if e.files]
    assert with_file and all(p.is_file() for e in with_file for p in e.files)
    upload = with_file[0].uploads()[0]
    assert upload.content == with_file[0].files[0].read_bytes()
    assert upload.content_type == "text/csv"
    assert any(e.team for e in entries) and any(e.team is None for e in entries)
    # Nothing billable starts on its own: every shipped schedule is created stopped.
    assert not any(e.enabled for e in entries)


def test_team_and_enabled_are_read(tmp_path):
    path = _write(
        tmp_path,
        "requests:\n  - {name: a, prompt: x, team: data-science, schedule: '@daily', "
        "enabled: true}\n  - {name: b, prompt: y}\n",
    )
    a, b = load_catalog(path)
    assert (a.team, a.enabled) == ("data-science", True)
    assert (b.team, b.enabled) == (None, False)


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "requests.yaml"
    path.write_text(body, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("requests:\n  - {name: a, prompt: x, template: foo}\n", "unknown template 'foo'"),
        ("requests:\n  - {name: a, prompt: '   '}\n", "prompt must be a non-empty string"),
        ("requests:\n  - {name: a}\n", "prompt must be a non-empty string"),
        ("requests:\n  - {name: a, prompt: x, blocks: []}\n", "blocks must be a non-empty list"),
        ("requests:\n  - {name: a, prompt: x, blocks: '[\"web-block\"]'}\n", "blocks must be"),
        (
            "requests:\n  - {name: a, prompt: x, blocks: [my-block]}\n",
            "unknown block type(s) my-block",
        ),
        (
            "requests:\n  - {name: a, prompt: x}\n  - {name: a, prompt: y}\n",
            "duplicate request name 'a'",
        ),
        (
            "requests:\n  - {name: a, prompt: x, files: [nope.csv]}\n",
            "attached file not found: nope.csv",
        ),
        ("requests:\n  - {name: Bad-Name, prompt: x}\n", "name must be lower_snake_case"),
        ("requests:\n  - {name: a, prompt: x, schedule: 'every day'}\n", "5-field cron"),
        ("requests:\n  - {name: a, prompt: x, schedule: '61 * * * *'}\n", "5-field cron"),
        ("requests:\n  - {name: a, prompt: x, colour: red}\n", "unknown field(s) colour"),
        ("requests: [\n", "invalid YAML at line"),
        ("- just a list\n", "expected a top-level 'requests:' list"),
        ("requests:\n  - 42\n", "entry #1 must be a mapping"),
        ("requests:\n  - {name: a, prompt: x, team: 'Data Platform'}\n", "team must be"),
        ("requests:\n  - {name: a, prompt: x, team: ''}\n", "team must be"),
        (
            "requests:\n  - {name: a, prompt: x, schedule: '@daily', enabled: 'yes'}\n",
            "enabled must be true or false",
        ),
        ("requests:\n  - {name: a, prompt: x, enabled: true}\n", "enabled: true needs a schedule"),
    ],
)
def test_invalid_catalogs_fail_with_one_clear_line(tmp_path, body, message):
    path = _write(tmp_path, body)
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    text = str(info.value)
    assert message in text
    assert "\n" not in text
    assert str(path) in text


def test_missing_catalog_file(tmp_path):
    with pytest.raises(CatalogError, match="catalog file not found"):
        load_catalog(tmp_path / "absent.yaml")


def test_files_resolve_relative_to_the_catalog(tmp_path):
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    path = _write(
        tmp_path, "requests:\n  - {name: a, prompt: x, files: [files/a.png], schedule: '@daily'}\n"
    )
    (entry,) = load_catalog(path)
    assert entry.files == ((tmp_path / "files" / "a.png").resolve(),)
    assert entry.uploads()[0].content_type == "image/png"
    assert entry.template == "auto"
