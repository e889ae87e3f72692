"""Evidence bundles (issue 16): `evidence RUN_ID --out DIR [--zip]` writes one run as a
self-contained, deterministic bundle; `verify-evidence` checks it offline with the public key
only, and fails, naming the file, after any change.

Exporting reads the archive, so it runs on both backends (`kit`). Checking reads only the
bundle, so the tampering cases share bundles exported once from one signed local archive
(three runs: A and B committed together, C by a later manifest).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import re
import shutil
import stat
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from spine_pipeline.archive.manifest import Manifest
from spine_pipeline.archive.proofs import load_proof
from spine_pipeline.archive.signing import SigningKey, VerifyKeys, generate_keypair
from spine_pipeline.archive.tlog import LogPublisher
from spine_pipeline.cli import main
from spine_pipeline.evidence.bundle import (
    INDEX,
    PROOF,
    SUMS,
    ZIP_TIME,
    bundle_page,
    proof_bytes,
    write_zip,
)
from spine_pipeline.evidence.run_data import load_run_data, read_run_data
from spine_pipeline.evidence.verify_bundle import BundleError, BundleLimits, verify_bundle
from spine_pipeline.simulator import SimulatorConfig, SimulatorServer
from spine_pipeline_tests.archive.conftest import ArchiveKit
from spine_pipeline_tests.evidence.conftest import dom_text, pixel_variety
from spine_pipeline_tests.fixtures.simulator import FAST_DEFAULTS

PROMPTS = (
    "[scenario:partial] Evidence for the auditors",  # A: blocks, errors, artifacts
    "[scenario:hostile-names] Names that look like paths",  # B: same manifest as A
    "[scenario:completed] A later batch",  # C: the next manifest
)


def _cli(*args: str, **env: str | None) -> Result:
    return CliRunner().invoke(main, list(args), env={"SPINE_VERIFY_KEY": None, **env})


def _signed_archive(kit: ArchiveKit, key: SigningKey) -> list[str]:
    ids = kit.submit(*PROMPTS)
    archiver = kit.archiver(publisher=LogPublisher(kit.store, key))
    assert archiver.archive(ids[:2]).ok and archiver.archive(ids[2:]).ok
    return ids


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` by relative path (no symlink is followed)."""
    out = {}
    for path in sorted(root.rglob("*")):
        assert not path.is_symlink(), path
        if path.is_file():
            out[path.relative_to(root).as_posix()] = path.read_bytes()
    return out


def _resum(root: Path) -> None:
    """Rewrite SHA256SUMS for the files now in `root`: what a forger would do."""
    files = {p: hashlib.sha256(b).hexdigest() for p, b in _tree(root).items() if p != SUMS}
    (root / SUMS).write_text("".join(f"{files[p]}  {p}\n" for p in sorted(files)))


def _fails(path: Path, keys: VerifyKeys, pattern: str, **kw) -> str:
    with pytest.raises(BundleError) as info:
        verify_bundle(path, keys, **kw)
    message = str(info.value)
    assert "\n" not in message
    assert re.search(pattern, message), message
    return message


def _flip(path: Path, pos: int) -> bytes:
    data = path.read_bytes()
    path.write_bytes(data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1 :])
    return data


# ----------------------------------------------------------------------------- both backends


def test_export_verifies_is_deterministic_and_private(kit, tmp_path: Path, umask_022) -> None:
    private, public = generate_keypair()
    key = SigningKey.from_pem(private)
    pem = public.decode()
    a, _, c = _signed_archive(kit, key)
    env = {"SPINE_ARCHIVE_URI": kit.uri, "SPINE_VERIFY_KEY": pem}

    first = tmp_path / "first"
    result = _cli("evidence", a, "--out", str(first), **env)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{first.absolute()}\n"
    assert result.stderr.startswith(f"OK evidence of run {a}: ")
    tree = _tree(first)
    data = load_run_data(kit.store, a)
    assert data.artifact_entries and data.blocks and data.errors  # every part is exercised
    expected = {INDEX, PROOF, SUMS, "manifests/000000000001.json"}
    expected |= {f.key for f in data.files} | {
        f"artifacts/{e.sha256}" for e in data.artifact_entries
    }
    assert set(tree) == expected
    # Exactly as committed / as `prove` prints / sha256sum format over every other file.
    assert tree["manifests/000000000001.json"] == kit.store.get_bytes("manifests/000000000001.json")
    for f in data.files:
        assert tree[f.key] == kit.store.get_bytes(f.key)
    for e in data.artifact_entries:
        assert tree[f"artifacts/{e.sha256}"] == kit.store.get_bytes(e.key)
    proved = _cli("prove", a, **env)
    assert tree[PROOF] == proved.stdout.encode()
    sums = tree[SUMS].decode().splitlines()
    assert sums == [
        f"{hashlib.sha256(tree[p]).hexdigest()}  {p}" for p in sorted(tree) if p != SUMS
    ]
    # Archived content: owner only, whatever the umask.
    for path in [first, *first.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))

    # The same run and checkpoint give the same bytes: directory and zip.
    second = tmp_path / "second"
    second.mkdir()  # an empty directory is accepted
    assert _cli("evidence", a, "--out", str(second), **env).exit_code == 0
    assert _tree(second) == tree
    zips = [tmp_path / "a1.zip", tmp_path / "a2.zip"]
    for z in zips:
        result = _cli("evidence", a, "--out", str(z), "--zip", **env)
        assert result.exit_code == 0, result.output
    assert zips[0].read_bytes() == zips[1].read_bytes()
    assert stat.S_IMODE(zips[0].stat().st_mode) == 0o600
    with zipfile.ZipFile(zips[0]) as zf:
        infos = zf.infolist()
        assert [i.filename for i in infos] == sorted(tree)
        assert {zf.read(i) == tree[i.filename] for i in infos} == {True}
        assert {(i.date_time, i.external_attr >> 16) for i in infos} == {(ZIP_TIME, 0o100600)}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]  # nothing left over

    for bundle in (first, zips[0]):
        result = _cli("verify-evidence", str(bundle), "--verify-key", pem)
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"OK evidence of run {a}: ")

    # Without a verify key the bundle is written unchecked (and says so); it still verifies.
    unchecked = tmp_path / "unchecked"
    result = _cli("evidence", c, "--out", str(unchecked), SPINE_ARCHIVE_URI=kit.uri)
    assert result.exit_code == 0, result.output
    assert "not checked: no verify key" in result.stderr
    assert load_proof((unchecked / PROOF).read_bytes()).checkpoint.key_ids == ()
    assert "did not check the signatures" in (unchecked / INDEX).read_text()
    assert verify_bundle(unchecked, VerifyKeys.load(pem)).run_id == c


def test_export_refusals_are_one_line(kit, tmp_path: Path) -> None:
    private, public = generate_keypair()
    env = {"SPINE_ARCHIVE_URI": kit.uri, "SPINE_VERIFY_KEY": public.decode()}
    (unsigned,) = kit.submit("[scenario:completed] before signing")
    assert kit.archiver().archive([unsigned]).ok

    def refused(*args: str, code: int = 1) -> str:
        result = _cli("evidence", *args, **env)
        assert result.exit_code == code, result.output
        assert len(result.output.splitlines()) == 1 and result.output.startswith("error: ")
        return result.output

    work = tmp_path / "work"  # the local archive is under tmp_path too
    work.mkdir()
    out = work / "out"
    assert "set SPINE_SIGNING_KEY" in refused(unsigned, "--out", str(out))
    assert not out.exists()

    a, _, _ = _signed_archive(kit, SigningKey.from_pem(private))
    assert "committed before SPINE_SIGNING_KEY was set" in refused(unsigned, "--out", str(out))
    assert "is not archived" in refused("0" * 36, "--out", str(out))
    assert "not a valid run id" in refused("../x", "--out", str(out), code=2)
    full = work / "full"
    full.mkdir()
    (full / "keep").write_text("keep")
    assert "it is not empty" in refused(a, "--out", str(full))
    link = work / "link"
    link.symlink_to(work / "elsewhere", target_is_directory=True)
    assert "it is a symlink" in refused(a, "--out", str(link))
    assert not (work / "elsewhere").exists()
    existing = work / "a.zip"
    existing.write_bytes(b"keep")
    assert "it exists" in refused(a, "--out", str(existing), "--zip")
    assert existing.read_bytes() == b"keep" and (full / "keep").read_text() == "keep"
    assert sorted(p.name for p in work.iterdir()) == ["a.zip", "full", "link"]


# ----------------------------------------------------------------------------- one signed archive


@dataclass
class Bundles:
    ids: list[str]
    pem: str
    keys: VerifyKeys
    other_pem: str
    dirs: dict[str, Path]  # run id -> its bundle directory
    zip: Path  # run A's bundle as a zip

    @property
    def a(self) -> Path:
        return self.dirs[self.ids[0]]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bundles]:
    base = tmp_path_factory.mktemp("bundles")
    sim = SimulatorServer(SimulatorConfig(**FAST_DEFAULTS)).start()
    try:
        kit = ArchiveKit(sim, str(base / "archive"))
        private, public = generate_keypair()
        ids = _signed_archive(kit, SigningKey.from_pem(private))
        env = {"SPINE_ARCHIVE_URI": kit.uri, "SPINE_VERIFY_KEY": public.decode()}
        dirs = {}
        for run_id in ids:
            dirs[run_id] = base / run_id
            assert _cli("evidence", run_id, "--out", str(dirs[run_id]), **env).exit_code == 0
        z = base / "a.zip"
        assert _cli("evidence", ids[0], "--out", str(z), "--zip", **env).exit_code == 0
        yield Bundles(
            ids=ids,
            pem=public.decode(),
            keys=VerifyKeys.load(public.decode()),
            other_pem=generate_keypair()[1].decode(),
            dirs=dirs,
            zip=z,
        )
    finally:
        sim.stop()


@pytest.fixture
def copy_a(bundles: Bundles, tmp_path: Path) -> Path:
    """A private copy of run A's bundle directory, to tamper with."""
    return Path(shutil.copytree(bundles.a, tmp_path / "a"))


def _file_of(root: Path, kind: str) -> Path:
    """One file of each kind a bundle holds."""
    if kind in ("parquet", "artifact", "manifest"):
        folder = {"parquet": "tables/blocks", "artifact": "artifacts", "manifest": "manifests"}
        return next(p for p in sorted((root / folder[kind]).rglob("*")) if p.is_file())
    return root / {"html": INDEX, "proof": PROOF, "sums": SUMS}[kind]


KINDS = ("html", "parquet", "artifact", "manifest", "proof", "sums")


@pytest.mark.parametrize("kind", KINDS)
def test_any_changed_byte_of_any_file_fails(bundles: Bundles, copy_a: Path, kind: str) -> None:
    path = _file_of(copy_a, kind)
    size = len(path.read_bytes())
    if kind == "sums":
        positions = range(size)  # every byte: each is a hash digit, a name or a separator
    else:
        spread = {0, 1, size // 4, size // 2, 3 * size // 4, size - 2, size - 1}
        positions = sorted(spread | set(random.Random(kind).sample(range(size), 16)))
    name = path.relative_to(copy_a).as_posix()
    for pos in positions:
        original = _flip(path, pos)
        try:
            message = _fails(copy_a, bundles.keys, r".")
            if kind != "sums":
                assert message.startswith(f"{name}: sha256 "), (pos, message)
        finally:
            path.write_bytes(original)
    assert verify_bundle(copy_a, bundles.keys).run_id == bundles.ids[0]  # restored: passes
    # The CLI: exit 1 and one line naming the file.
    _flip(path, size // 2)
    result = _cli("verify-evidence", str(copy_a), "--verify-key", bundles.pem)
    assert result.exit_code == 1 and len(result.output.splitlines()) == 1, result.output
    assert result.output.startswith("error: ") and (
        "SHA256SUMS" in result.output or name in result.output
    )


#: A byte changed and SHA256SUMS rewritten to match: what each deeper check says.
FORGED = {
    "html": r"^index\.html: not the rendering of the bundled data$",
    "parquet": r"^tables/blocks/.*: sha256 \w+ \(\d+ bytes\) is not the \w+ \(\d+ bytes\) "
    r"manifests/000000000001\.json lists$",
    "artifact": r"^artifacts/\w+: sha256 .* manifests/000000000001\.json lists$",
    "manifest": r"^manifests/000000000001\.json: sha256 \w+ is not the manifest proof\.json carries",
    "proof": r"^proof\.json: ",
}


@pytest.mark.parametrize("kind", sorted(FORGED))
def test_a_changed_file_with_rewritten_sums_fails_deeper(
    bundles: Bundles, copy_a: Path, kind: str
) -> None:
    path = _file_of(copy_a, kind)
    size = len(path.read_bytes())
    for pos in sorted({size // 3, size // 2, size - 2}):
        original = _flip(path, pos)
        _resum(copy_a)
        _fails(copy_a, bundles.keys, FORGED[kind])
        path.write_bytes(original)
    _resum(copy_a)
    verify_bundle(copy_a, bundles.keys)  # the control: rewriting the sums alone changes nothing


def test_a_grown_or_shrunk_page_with_rewritten_sums_fails(bundles: Bundles, copy_a: Path) -> None:
    page = copy_a / INDEX
    original = page.read_bytes()
    for changed in (original + b"<!-- more -->", original[:-1]):
        page.write_bytes(changed)
        _resum(copy_a)
        _fails(copy_a, bundles.keys, r"^index\.html: not the rendering of the bundled data$")
    # A page naming another renderer says so (the bytes may differ because the renderer does).
    other = re.sub(rb"markdown-it-py/[0-9.]+", b"markdown-it-py/0.0.1", original, count=1)
    assert other != original
    for changed, named in ((other, "markdown-it-py/0.0.1"), (b"", "no generator tag")):
        page.write_bytes(changed)
        _resum(copy_a)
        message = _fails(copy_a, bundles.keys, r"^index\.html: not the rendering .* \(it names ")
        assert named in message


def test_a_proof_that_does_not_lead_to_the_root_fails(bundles: Bundles, copy_a: Path) -> None:
    doc = json.loads((copy_a / PROOF).read_bytes())
    sibling = doc["inclusion_proof"][0]
    doc["inclusion_proof"][0] = ("0" if sibling[0] != "0" else "1") + sibling[1:]
    (copy_a / PROOF).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    _resum(copy_a)
    _fails(copy_a, bundles.keys, r"^proof\.json: .*the inclusion proof does not lead")


@pytest.mark.parametrize("other", [1, 2], ids=["same-manifest", "later-manifest"])
def test_another_runs_proof_fails(bundles: Bundles, copy_a: Path, other: int) -> None:
    theirs = bundles.dirs[bundles.ids[other]]
    shutil.copyfile(theirs / PROOF, copy_a / PROOF)
    with pytest.raises(BundleError):
        verify_bundle(copy_a, bundles.keys)  # the sums catch it first
    _resum(copy_a)
    if other == 1:  # B's proof checks, but the bundle holds A's artifacts and page
        _fails(
            copy_a,
            bundles.keys,
            rf"^artifacts/\w+.*(not part of|missing from) run {bundles.ids[1]}",
        )
    else:
        _fails(
            copy_a, bundles.keys, r"^manifests/000000000002\.json: the manifest proof\.json names"
        )
        # ... and with C's manifest copied in too, A's table files are not C's evidence.
        (copy_a / "manifests/000000000002.json").write_bytes(
            (theirs / "manifests/000000000002.json").read_bytes()
        )
        _resum(copy_a)
        _fails(copy_a, bundles.keys, rf"not part of run {bundles.ids[2]}'s evidence")


def test_the_wrong_public_key_fails(bundles: Bundles) -> None:
    for bundle in (bundles.a, bundles.zip):
        _fails(
            bundle,
            VerifyKeys.load(bundles.other_pem),
            r"^proof\.json: manifests/000000000001\.json: ",
        )
        result = _cli("verify-evidence", str(bundle), "--verify-key", bundles.other_pem)
        assert result.exit_code == 1 and len(result.output.splitlines()) == 1, result.output
        # Both keys given: the right one is among them, so it passes.
        both = _cli(
            "verify-evidence", str(bundle), SPINE_VERIFY_KEY=bundles.other_pem + bundles.pem
        )
        assert both.exit_code == 0, both.output
    assert _cli("verify-evidence", str(bundles.a)).exit_code == 2  # no key at all
    bad = _cli("verify-evidence", str(bundles.a), "--verify-key", "/no/such/key.pem")
    assert bad.exit_code == 2 and len(bad.output.splitlines()) == 1
    assert _cli("verify-evidence", "/no/such/bundle", "--verify-key", bundles.pem).exit_code == 2


def test_key_ids_the_proof_claims_must_be_confirmed(bundles: Bundles, copy_a: Path) -> None:
    """The page shows the proof's key ids; a bundle naming a key that did not sign fails."""
    proof = load_proof((copy_a / PROOF).read_bytes())
    doc = proof.to_json()
    doc["checkpoint"]["key_ids"] = [VerifyKeys.load(bundles.other_pem).ids[0]]
    forged = load_proof(json.dumps(doc).encode())
    manifest = Manifest.from_bytes(proof.manifest_bytes, key=proof.manifest_key)

    def opener(key: str):
        return (copy_a / key).open("rb")

    for claim, ok in ((proof, True), (forged, False)):
        (copy_a / PROOF).write_bytes(proof_bytes(claim))
        data = read_run_data(manifest, claim.run_id, opener)
        (copy_a / INDEX).write_bytes(bundle_page(data, claim))
        _resum(copy_a)
        if ok:
            verify_bundle(copy_a, bundles.keys)
        else:
            _fails(
                copy_a,
                bundles.keys,
                r"^proof\.json: the checkpoint names key id\(s\) \w+ that did not sign",
            )


def test_extra_and_missing_files_fail(bundles: Bundles, copy_a: Path) -> None:
    keys = bundles.keys
    (copy_a / "notes.txt").write_text("extra")
    _fails(copy_a, keys, r"^notes\.txt: an extra file, not listed in SHA256SUMS$")
    _resum(copy_a)
    _fails(copy_a, keys, rf"^notes\.txt: not part of run {bundles.ids[0]}'s evidence$")
    (copy_a / "notes.txt").unlink()
    _resum(copy_a)
    verify_bundle(copy_a, keys)

    victim = _file_of(copy_a, "artifact")
    saved = victim.read_bytes()
    victim.unlink()
    _fails(copy_a, keys, rf"^artifacts/{victim.name}: listed in SHA256SUMS but missing$")
    _resum(copy_a)
    _fails(
        copy_a, keys, rf"^artifacts/{victim.name}: missing from run {bundles.ids[0]}'s evidence$"
    )
    victim.write_bytes(saved)
    _resum(copy_a)

    (copy_a / SUMS).unlink()
    _fails(copy_a, keys, r"^SHA256SUMS is missing$")
    _resum(copy_a)
    (copy_a / INDEX).unlink()
    _resum(copy_a)
    _fails(copy_a, keys, rf"^index\.html: missing from run {bundles.ids[0]}'s evidence$")


def test_a_symlink_or_special_file_in_a_bundle_directory_is_refused(
    bundles: Bundles, copy_a: Path, tmp_path: Path
) -> None:
    victim = _file_of(copy_a, "artifact")
    outside = tmp_path / "outside"
    shutil.copyfile(victim, outside)
    victim.unlink()
    victim.symlink_to(outside)  # same bytes, but through a link
    _fails(copy_a, bundles.keys, rf"^artifacts/{victim.name}: a symlink")
    victim.unlink()
    os.mkfifo(victim)
    _fails(copy_a, bundles.keys, rf"^artifacts/{victim.name}: not a regular file$")


# ----------------------------------------------------------------------------- hostile zips


def _zip_of(root: Path, dest: Path, *extra: tuple[zipfile.ZipInfo | str, bytes]) -> Path:
    """A zip of the bundle at `root`, plus extra (hostile) entries."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in _tree(root).items():
            zf.writestr(name, data)
        for info, data in extra:
            zf.writestr(info, data)
    return dest


def _symlink_entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def test_zip_bundle_checks_and_a_changed_member_fails(
    bundles: Bundles, copy_a: Path, tmp_path: Path
) -> None:
    assert verify_bundle(bundles.zip, bundles.keys).run_id == bundles.ids[0]
    # A zip made by another tool, with directory entries, is the same bundle.
    other = tmp_path / "dirs.zip"
    with zipfile.ZipFile(other, "w") as zf:
        for d in ("artifacts/", "manifests/", "tables/"):
            zf.writestr(d, b"")
        for name, data in _tree(copy_a).items():
            zf.writestr(name, data)
    assert verify_bundle(other, bundles.keys).run_id == bundles.ids[0]
    # A changed member, with and without rewritten sums.
    _flip(copy_a / INDEX, 100)
    _fails(_zip_of(copy_a, tmp_path / "changed.zip"), bundles.keys, r"^index\.html: sha256 ")
    _resum(copy_a)
    _fails(
        _zip_of(copy_a, tmp_path / "forged.zip"), bundles.keys, r"^index\.html: not the rendering"
    )


@pytest.mark.parametrize(
    ("entry", "pattern"),
    [
        ("../evil.html", r"unsafe name in the zip"),
        ("/etc/cron.d/evil", r"unsafe name in the zip"),
        ("artifacts/../../evil", r"unsafe name in the zip"),
        ("artifacts\\..\\evil", r"unsafe name in the zip"),
        ("index.html\x01.txt", r"unsafe name in the zip"),
        ("index.htmlNUL.txt", r"unsafe name in the zip"),  # NUL patched in below
        (_symlink_entry("artifacts/evil"), r"^artifacts/evil: a symlink entry"),
        ("index.html", r"^index\.html: appears twice in the zip$"),
    ],
    ids=["parent", "absolute", "inner-parent", "backslash", "control", "nul", "symlink", "dup"],
)
def test_hostile_zip_entries_are_refused(
    bundles: Bundles, tmp_path: Path, entry: zipfile.ZipInfo | str, pattern: str
) -> None:
    with pytest.warns(UserWarning) if entry == "index.html" else contextlib.nullcontext():
        hostile = _zip_of(bundles.a, tmp_path / "hostile.zip", (entry, b"<script>x</script>"))
    if entry == "index.htmlNUL.txt":  # zipfile cannot write a NUL in a name: patch the bytes
        data = hostile.read_bytes()
        assert data.count(b"index.htmlNUL.txt") == 2  # local header and central directory
        hostile.write_bytes(data.replace(b"index.htmlNUL.txt", b"index.html\x00NU.txt"))
    _fails(hostile, bundles.keys, pattern)
    result = _cli("verify-evidence", str(hostile), "--verify-key", bundles.pem)
    assert result.exit_code == 1 and len(result.output.splitlines()) == 1, result.output


def test_zip_bombs_are_refused_before_inflating(bundles: Bundles, tmp_path: Path) -> None:
    # A real bomb: 64 MiB of zeros in about 64 KB, against a 16 MiB cap.
    bomb = _zip_of(bundles.a, tmp_path / "bomb.zip", ("artifacts/" + "0" * 64, bytes(64 << 20)))
    assert bomb.stat().st_size < 1 << 20
    limits = BundleLimits(max_total_bytes=16 << 20)
    _fails(
        bomb, bundles.keys, r"larger than 16777216 bytes in total \(refused unread\)", limits=limits
    )
    # A central directory that claims 100 GiB: refused under the default cap, nothing read.
    liar = _zip_of(bundles.a, tmp_path / "liar.zip")
    _claim_size(liar, INDEX, 100 << 30)
    _fails(liar, bundles.keys, r"^index\.html: the zip's files are larger than \d+ bytes")
    # Too many entries.
    few = BundleLimits(max_files=5)
    _fails(bundles.zip, bundles.keys, r"^the zip holds 14 entries, more than 5$", limits=few)
    _fails(bundles.a, bundles.keys, r"^the directory holds more than 5 files$", limits=few)
    # Not a zip at all.
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"PK\x03\x04 not really")
    _fails(junk, bundles.keys, r"not a directory or a readable zip")


def _claim_size(path: Path, name: str, size: int) -> None:
    """Make the central directory entry of `name` claim `size` uncompressed bytes (ZIP64)."""
    with zipfile.ZipFile(path) as zf:
        entries = [(i, zf.read(i)) for i in zf.infolist()]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in entries:
            zf.writestr(info, data)
        target = next(i for i in zf.filelist if i.filename == name)
        target.file_size = size  # written into the central directory at close
    path.write_bytes(buf.getvalue())
    with zipfile.ZipFile(path) as zf:
        assert zf.getinfo(name).file_size == size


def test_write_zip_is_byte_identical_across_umask_and_mtime(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "b").write_bytes(b"b" * 1000)
    (src / "a").write_bytes(b"a")
    files = [("d/b", src / "d" / "b"), ("a", src / "a")]
    first = io.BytesIO()
    write_zip(first, files)
    os.utime(src / "a", (0, 0))
    (src / "d" / "b").chmod(0o644)
    second = io.BytesIO()
    write_zip(second, reversed(files))
    assert first.getvalue() == second.getvalue()
    # No data descriptors, no extra fields: fixed-size local headers, names sorted.
    data = first.getvalue()
    sig, _, flags = struct.unpack("<IHH", data[:8])
    assert sig == 0x04034B50 and flags & 0x08 == 0
    assert [i.filename for i in zipfile.ZipFile(first).infolist()] == ["a", "d/b"]


# ----------------------------------------------------------------------------- the page


def test_the_bundled_page_opens_in_chromium_with_every_block(
    bundles: Bundles, chromium, tmp_path: Path
) -> None:
    bundle = bundles.a
    proof = load_proof((bundle / PROOF).read_bytes())
    manifest = Manifest.from_bytes(proof.manifest_bytes, key=proof.manifest_key)
    data = read_run_data(manifest, proof.run_id, lambda key: (bundle / key).open("rb"))
    run = chromium(bundle / INDEX, "--dump-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    dom = run.stdout
    assert dom.count('<a class="node"') == len(data.blocks) > 0
    for b in data.blocks:
        section = dom.split(f'<article class="block" id="block-{b.ordinal}"', 1)[1]
        section = section.split("</article>", 1)[0]
        words = re.findall(r"[A-Za-z]{4,}", b.content or "")[:10]
        assert all(w in dom_text(section) for w in words), b.ordinal
    status = dom_text(dom.split('id="verification-status"', 1)[1].split("</p>", 1)[0])
    assert f"Evidence bundle of run {proof.run_id}" in status
    assert proof.checkpoint.root.hex() in dom_text(dom.split('id="checkpoint"', 1)[1])
    links = re.findall(r'href="(artifacts/[0-9a-f]{64})"', dom)
    assert links and all((bundle / link).is_file() for link in links)
    assert "<script" not in dom and "<img" not in dom
    shot = tmp_path / "bundle.png"
    run = chromium(bundle / INDEX, f"--screenshot={shot}")
    assert shot.exists(), run.stderr[-2000:]
    colours, inked = pixel_variety(shot)
    assert colours > 50 and inked > 0.02, (colours, inked)
