"""An archive knows which Spine it serves, and a Spine that hands out an id twice is loud.

`archive.json` names `"simulator"` (any simulator instance) or a real Spine's origin; a
writer, a submit and the demo of another Spine are refused with one line. A run id that is
already archived and comes back as another run fails on that run; its batch-mates commit.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from spine_pipeline.archive.archiver import Archiver, ArchiveRequest
from spine_pipeline.archive.identity import (
    SIMULATOR,
    ArchiveIdentity,
    SpineMismatchError,
    ensure_identity,
    read_identity,
    spine_of,
)
from spine_pipeline.archive.layout import IDENTITY_KEY, MANIFEST_PREFIX
from spine_pipeline.archive.ledger import Ledger
from spine_pipeline.archive.stores import open_store
from spine_pipeline.spine import AsyncSpineClient, SpineClient
from spine_pipeline.submission import RunIdReused, SubmitSpec, submit_and_record
from spine_pipeline_tests.archive.conftest import FAST, ArchiveKit

REAL = "https://api.getspine.ai"


def _manifests(kit: ArchiveKit) -> list[str]:
    return sorted(i.key for i in kit.store.list(MANIFEST_PREFIX))


def test_spine_of_names_every_loopback_url_the_simulator_and_normalises_real_ones():
    for url in (
        "http://127.0.0.1:8765",
        "http://127.0.0.1:41234/v1",
        "http://localhost:9",
        "http://[::1]:80/",
        "http://127.5.6.7",
    ):
        assert spine_of(url) == SIMULATOR, url
    assert spine_of("https://API.getspine.ai/v1/") == REAL
    assert spine_of("https://api.getspine.ai:443") == REAL
    assert spine_of("https://user:secret@spine.example.com:8443/v1?k=x") == (
        "https://spine.example.com:8443"
    )


def test_a_new_archive_names_the_simulator_and_takes_any_simulator(kit, make_simulator):
    first = kit.submit("[scenario:completed] first simulator")
    assert kit.archiver().archive(first).ok
    identity = read_identity(kit.store)
    assert identity is not None and identity.spine == SIMULATOR
    other = ArchiveKit(make_simulator(seed=99), kit.uri)  # another instance, another port
    assert other.sim.port != kit.sim.port
    second = other.submit("[scenario:completed] second simulator")
    assert other.archiver().archive(second).ok
    assert read_identity(kit.store) == identity


def test_an_archive_of_a_real_spine_refuses_the_simulator(kit, monkeypatch):
    """The record a real pipeline's first commit writes; the simulator's paths must refuse
    it before anything is sent or written."""
    ensure_identity(kit.store, spine=REAL)
    ids = kit.submit("[scenario:completed] a simulator run")
    with pytest.raises(SpineMismatchError) as caught:
        kit.archiver().archive(ids)
    message = str(caught.value)
    assert "\n" not in message and "the Spine at https://api.getspine.ai" in message
    assert "the Spine simulator" in message and "SPINE_ARCHIVE_URI at a fresh path" in message
    assert _manifests(kit) == []
    created = kit.sim.world.created_count
    with kit.client() as client, pytest.raises(SpineMismatchError):
        submit_and_record(client, Ledger(kit.store), SubmitSpec("not billed"), source="test")
    assert kit.sim.world.created_count == created  # nothing sent, so nothing billed
    assert list(Ledger(kit.store).submissions()) == []

    from spine_pipeline.demo import demo_on_simulator
    from spine_pipeline.settings import Settings

    monkeypatch.setenv("SPINE_ARCHIVE_URI", kit.uri)
    with pytest.raises(SpineMismatchError, match="fresh path"):
        demo_on_simulator(Settings.from_env(), timeout=10, run_seconds="1:2", say=print)
    assert _manifests(kit) == []


def test_an_archive_of_the_simulator_refuses_a_real_spine(kit):
    """Nothing leaves the machine: the refusal comes before any request to the real URL."""
    ids = kit.submit("[scenario:completed] a simulator run")
    assert kit.archiver().archive(ids).ok
    real = Archiver(
        open_store(kit.uri),
        lambda: AsyncSpineClient(api_key="sk_real_key_x", base_url=REAL, retry=FAST),
    )
    with pytest.raises(SpineMismatchError, match="serves the Spine simulator, not the Spine at"):
        real.archive(["11111111-2222-4333-8444-555555555555"])
    with (
        SpineClient(api_key="sk_real_key_x", base_url=REAL, retry=FAST) as client,
        pytest.raises(SpineMismatchError, match="fresh path"),
    ):
        submit_and_record(client, Ledger(kit.store), SubmitSpec("x"), source="test")
    assert len(_manifests(kit)) == 1


def test_an_archive_from_before_the_field_stays_unbound(tmp_path, simulator):
    """A record without `spine` (written before it existed) is write-once: not rebound, and
    any Spine's writer is accepted (docs/decisions.md)."""
    kit = ArchiveKit(simulator, str(tmp_path / "archive"))
    old = ArchiveIdentity(archive_id="ab" * 16, created_at="2026-01-01T00:00:00Z")
    kit.store.put_bytes(IDENTITY_KEY, old.to_bytes())
    ids = kit.submit("[scenario:completed] into an old archive")
    assert kit.archiver().archive(ids).ok
    assert read_identity(kit.store) == old and old.spine is None


def test_a_reused_run_id_fails_loudly_and_its_batch_mates_commit(kit, make_simulator):
    """A simulator restarted with the same seed hands out the archived run's id again."""
    (old_id,) = kit.submit("[scenario:completed] the first session's run")
    assert kit.archiver().archive([old_id]).ok
    old_rows = kit.tables()["runs"].to_pylist()
    again = ArchiveKit(make_simulator(), kit.uri)  # same seed as the first one
    submitted_at = datetime.now(UTC)
    reused, mate = again.submit(
        "[scenario:completed] a new run", "[scenario:completed] its batch-mate"
    )
    assert reused == old_id
    result = again.archiver().archive(
        [ArchiveRequest(reused, submitted_at=submitted_at), ArchiveRequest(mate)]
    )
    loud, committed = result.outcomes
    assert loud.outcome == "failed" and "\n" not in loud.message
    assert f"run id {reused} was reused" in loud.message and "fresh path" in loud.message
    assert committed.outcome == "archived"
    runs = kit.tables()["runs"].to_pylist()
    assert [r for r in runs if r["run_id"] == reused] == old_rows  # not archived over it
    # The same run asked for again (submitted before it was archived) is a plain skip.
    same = again.archiver().archive([ArchiveRequest(reused, submitted_at=None)])
    assert same.outcomes[0].outcome == "already_archived"


def test_a_submit_that_gets_a_tracked_run_id_fails_loudly(tmp_path, make_simulator):
    """The Dagster path never hands an archived run to the archiver: the submit that
    receives a known id is where the reuse shows (the asset and `submit` fail)."""
    store = open_store(str(tmp_path / "archive"))
    with SpineClient(
        api_key="sk_spine_simulator", base_url=make_simulator(seed=5).base_url, retry=FAST
    ) as client:
        first = submit_and_record(client, Ledger(store), SubmitSpec("one"), source="test")
    with (
        SpineClient(
            api_key="sk_spine_simulator", base_url=make_simulator(seed=5).base_url, retry=FAST
        ) as client,
        pytest.raises(RunIdReused) as caught,
    ):
        submit_and_record(client, Ledger(store), SubmitSpec("two"), source="test")
    message = str(caught.value)
    assert first.created.run_id in message and "\n" not in message
    assert "--seed" in message and "fresh path" in message
    assert len(list(Ledger(store).submissions())) == 2  # the attempt is still recorded


def test_a_run_tracked_after_its_submit_is_not_a_reuse(tmp_path, make_simulator):
    """A `run.started` webhook may track the new run while the submit's ledger write waits
    out a store outage: that record is newer than the POST, so it is the same run."""
    from datetime import timedelta

    store = open_store(str(tmp_path / "archive"))
    with SpineClient(
        api_key="sk_spine_simulator", base_url=make_simulator(seed=5).base_url, retry=FAST
    ) as client:
        known = client.create_run("learn the first id of seed 5").run_id
    later = datetime.now(UTC) + timedelta(seconds=30)
    Ledger(store).track(known, source="webhook", now=later)
    with SpineClient(
        api_key="sk_spine_simulator", base_url=make_simulator(seed=5).base_url, retry=FAST
    ) as client:
        result = submit_and_record(client, Ledger(store), SubmitSpec("same id"), source="test")
    assert result.created.run_id == known and result.tracked is False
