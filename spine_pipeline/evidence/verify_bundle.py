"""`spine-pipeline verify-evidence DIR|ZIP`: check an evidence bundle offline, public key only.

Why: the bundle is for people outside our systems (auditors, regulators, courts). They hold
a directory or a zip and the archive's public key, nothing else; this is everything that has
to hold for the bundle to be the run the archive committed, in the order a forger would
have to defeat it:

1. the container: a directory without symlinks or special files, or a zip without unsafe
   names (absolute, `..`, backslashes, control characters), symlink entries, duplicate names,
   encryption or unknown compression, and with bounded sizes (a zip bomb is refused by its
   declared total before anything is inflated; inflating never yields more than declared);
2. `SHA256SUMS` lists exactly the other files, and each hashes to its line;
3. `proof.json` is a well-formed proof; `check_run_proof` holds with the given keys (the
   manifest's signature, the checkpoint's signature, the inclusion proof, the checkpoint's
   origin is the manifest's archive); every key id the proof states is one the keys
   confirmed; the bundled manifest is byte for byte the manifest text the proof carries;
4. the bundle holds exactly the manifest's files of the run (`bundle.bundled_objects`), each
   with the size and sha256 the manifest lists, and nothing else;
5. `index.html` is byte-equal to the page rendered again from the bundled files
   (`read_run_data` over the bundle, `bundle.bundle_page`).

Any failure is a `BundleError`: one line naming the file and what is wrong.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from spine_pipeline.archive.proofs import (
    MAX_MANIFEST_BYTES,
    MAX_PROOF_FILE_BYTES,
    ProofError,
    check_run_proof,
    load_proof,
)
from spine_pipeline.archive.signing import VerifyKeys
from spine_pipeline.archive.stores import printable, validate_key
from spine_pipeline.archive.tlog import SignedCheckpoint
from spine_pipeline.evidence.bundle import (
    ARTIFACT_DIR,
    INDEX,
    PROOF,
    SUMS,
    bundle_page,
    bundled_objects,
)
from spine_pipeline.evidence.page import GENERATOR
from spine_pipeline.evidence.run_data import EvidenceError, read_run_data

__all__ = ["LIMITS", "BundleError", "BundleLimits", "BundleReport", "verify_bundle"]

_CHUNK = 1 << 20
_SUMS_LINE = re.compile(r"([0-9a-f]{64})  (.+)")
_GENERATOR_TAG = re.compile(rb'<meta name="generator" content="([^"]{0,200})">')


class BundleError(ValueError):
    """The bundle does not check: one line naming the file and the reason (exit 1)."""


@dataclass(frozen=True)
class BundleLimits:
    """What a bundle may hold before it is refused unread (docs/evidence.md).

    Far above a real run's bundle (its table files, artifacts and a page), low enough that a
    hostile container cannot make the checker inflate, list or hash without end.
    """

    max_files: int = 200_000
    max_total_bytes: int = 64 << 30
    max_depth: int = 16
    max_sums_bytes: int = 64 << 20


LIMITS = BundleLimits()


@dataclass(frozen=True)
class BundleReport:
    """A bundle that checked: which run, committed by which manifest, proven against which
    checkpoint (as verified: its key ids are the keys that signed it)."""

    run_id: str
    manifest_key: str
    manifest_key_id: str
    leaf_index: int
    checkpoint: SignedCheckpoint
    files: int
    artifacts: int
    bytes_hashed: int

    def line(self) -> str:
        cp = self.checkpoint
        return (
            f"OK evidence of run {self.run_id}: {self.files} files ({self.artifacts} artifacts, "
            f"{self.bytes_hashed} bytes) match SHA256SUMS and {self.manifest_key} (signed by key "
            f"id {self.manifest_key_id}), leaf {self.leaf_index} of {cp.checkpoint.origin} at "
            f"size {cp.size} (root {cp.root.hex()}, checkpoint signed by key id(s) "
            f"{', '.join(cp.key_ids)}); index.html is the rendering of the bundled data"
        )


# ----------------------------------------------------------------------------- containers


class _Container:
    """A bundle's files: `sizes` (path -> bytes as listed) and `open(path)`."""

    where = "bundle"

    def __init__(self, limits: BundleLimits) -> None:
        self.limits = limits
        self.sizes: dict[str, int] = {}
        self.total = 0

    def add(self, path: str, size: int) -> None:
        """Record one file; refuse a duplicate, too many files or too many bytes, unread."""
        if path in self.sizes:
            raise BundleError(f"{path}: appears twice in the {self.where}")
        self.sizes[path] = size
        self.total += size
        if len(self.sizes) > self.limits.max_files:
            raise BundleError(f"the {self.where} holds more than {self.limits.max_files} files")
        if self.total > self.limits.max_total_bytes:
            raise BundleError(
                f"{path}: the {self.where}'s files are larger than {self.limits.max_total_bytes} "
                "bytes in total (refused unread)"
            )

    def open(self, path: str) -> IO[bytes]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _bundle_path(path: str, where: str) -> str:
    try:
        return validate_key(path)
    except ValueError:
        raise BundleError(
            f"{printable(path)[:200]}: unsafe name in the {where} (absolute, '..', empty, "
            "backslash or control characters)"
        ) from None


class _Directory(_Container):
    """A bundle directory, read through directory file descriptors with O_NOFOLLOW, so no
    symlink inside it (planted before or while checking) is ever followed."""

    _DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    where = "directory"

    def __init__(self, root: Path, limits: BundleLimits) -> None:
        super().__init__(limits)
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._walk(limits)
        except BaseException:
            os.close(self.root_fd)
            raise

    def _walk(self, limits: BundleLimits) -> None:
        stack: list[tuple[int, str, int]] = [(self.root_fd, "", 0)]
        while stack:
            fd, prefix, depth = stack.pop()
            try:
                with os.scandir(fd) as entries:
                    found = sorted(entries, key=lambda e: e.name)
                for entry in found:
                    rel = _bundle_path(prefix + entry.name, "directory")
                    if entry.is_symlink():
                        raise BundleError(f"{rel}: a symlink (a bundle holds none)")
                    if entry.is_dir(follow_symlinks=False):
                        if depth + 1 > limits.max_depth:
                            raise BundleError(f"{rel}: nested deeper than {limits.max_depth}")
                        sub = os.open(entry.name, self._DIR, dir_fd=fd)
                        stack.append((sub, rel + "/", depth + 1))
                    elif entry.is_file(follow_symlinks=False):
                        self.add(rel, entry.stat(follow_symlinks=False).st_size)
                    else:
                        raise BundleError(f"{rel}: not a regular file")
            finally:
                if fd != self.root_fd:
                    os.close(fd)

    def open(self, path: str) -> IO[bytes]:
        *dirs, name = path.split("/")
        fd = self.root_fd
        try:
            for segment in dirs:
                nxt = os.open(segment, self._DIR, dir_fd=fd)
                if fd != self.root_fd:
                    os.close(fd)
                fd = nxt
            file_fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError as exc:
            raise BundleError(f"{path}: cannot be opened ({exc.strerror})") from None
        finally:
            if fd != self.root_fd:
                os.close(fd)
        if not stat.S_ISREG(os.fstat(file_fd).st_mode):
            os.close(file_fd)
            raise BundleError(f"{path}: not a regular file")
        return os.fdopen(file_fd, "rb")

    def close(self) -> None:
        os.close(self.root_fd)


class _Zip(_Container):
    """A bundle zip, judged by its central directory before any entry is inflated."""

    where = "zip"

    def __init__(self, path: Path, limits: BundleLimits) -> None:
        super().__init__(limits)
        try:
            self.zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError) as exc:
            raise BundleError(f"{path.name}: not a directory or a readable zip ({exc})") from None
        self.infos: dict[str, zipfile.ZipInfo] = {}
        try:
            self._index(limits)
        except BaseException:
            self.zf.close()
            raise

    def _index(self, limits: BundleLimits) -> None:
        infos = self.zf.infolist()
        if len(infos) > limits.max_files:
            raise BundleError(f"the zip holds {len(infos)} entries, more than {limits.max_files}")
        dirs: set[str] = set()
        for info in infos:
            if info.filename != info.orig_filename:  # zipfile cut it at a NUL
                raise BundleError(f"{printable(info.orig_filename)[:200]}: unsafe name in the zip")
            name = info.filename
            kind = stat.S_IFMT(info.external_attr >> 16)
            if kind == stat.S_IFLNK:
                raise BundleError(f"{printable(name)[:200]}: a symlink entry (a bundle holds none)")
            if name.endswith("/"):  # a directory entry, as `zip -r` writes: holds nothing
                rel = _bundle_path(name[:-1], "zip")
                if info.file_size or kind not in (0, stat.S_IFDIR) or rel in dirs:
                    raise BundleError(f"{rel}/: not a plain directory entry")
                dirs.add(rel)
                continue
            rel = _bundle_path(name, "zip")
            if kind not in (0, stat.S_IFREG):
                raise BundleError(f"{rel}: not a regular file")
            if info.flag_bits & 0x1:
                raise BundleError(f"{rel}: encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise BundleError(f"{rel}: compression method {info.compress_type} not accepted")
            self.add(rel, info.file_size)
            self.infos[rel] = info
        clash = dirs & self.sizes.keys()
        if clash:
            raise BundleError(f"{sorted(clash)[0]}: both a file and a directory in the zip")

    def open(self, path: str) -> IO[bytes]:
        try:
            return self.zf.open(self.infos[path])
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
            raise BundleError(f"{path}: unreadable zip entry ({exc})") from None

    def close(self) -> None:
        self.zf.close()


@contextlib.contextmanager
def _container(path: Path, limits: BundleLimits) -> Iterator[_Container]:
    box: _Container = _Directory(path, limits) if path.is_dir() else _Zip(path, limits)
    try:
        yield box
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:  # a read inside read_run_data
        raise BundleError(f"unreadable zip entry ({exc})") from None
    finally:
        box.close()


def _read(box: _Container, path: str, limit: int, sink: Callable[[bytes], None]) -> int:
    """Stream `path` to `sink`; refuse more than `limit` bytes or fewer than listed."""
    got = 0
    try:
        with box.open(path) as f:
            while chunk := f.read(_CHUNK):
                got += len(chunk)
                if got > limit:
                    raise BundleError(f"{path}: larger than {limit} bytes")
                sink(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise BundleError(f"{path}: unreadable zip entry ({exc})") from None
    if got != box.sizes[path]:
        raise BundleError(f"{path}: {got} bytes, the container lists {box.sizes[path]}")
    return got


def _read_bytes(box: _Container, path: str, limit: int) -> bytes:
    parts: list[bytes] = []
    _read(box, path, limit, parts.append)
    return b"".join(parts)


# ----------------------------------------------------------------------------- checks


def _parse_sums(data: bytes) -> dict[str, str]:
    """path -> sha256 from `SHA256SUMS` (text mode lines `<64 hex>  <path>`), strictly."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BundleError(f"{SUMS}: not UTF-8 text") from None
    if not text.endswith("\n"):
        raise BundleError(f"{SUMS}: empty, or its last line is unterminated")
    listed: dict[str, str] = {}
    for n, line in enumerate(text[:-1].split("\n"), start=1):
        m = _SUMS_LINE.fullmatch(line)
        if m is None:
            raise BundleError(f"{SUMS} line {n}: not '<sha256 in lower-case hex>  <path>'")
        path = _bundle_path(m.group(2), SUMS)
        if path == SUMS:
            raise BundleError(f"{SUMS} line {n}: lists {SUMS} itself")
        if path in listed:
            raise BundleError(f"{SUMS} line {n}: lists {path} twice")
        listed[path] = m.group(1)
    return listed


def _one_of(paths: set[str]) -> str:
    first = sorted(paths)[0]
    return first + (f" (and {len(paths) - 1} more)" if len(paths) > 1 else "")


def verify_bundle(path: Path, keys: VerifyKeys, *, limits: BundleLimits = LIMITS) -> BundleReport:
    """Check the evidence bundle at `path` (a directory or a zip) with `keys` only.

    Returns what was shown; raises `BundleError` (one line) for the first check that fails
    (module docstring). Reads nothing but the bundle.
    """
    with _container(path, limits) as box:
        if SUMS not in box.sizes:
            raise BundleError(f"{SUMS} is missing")
        listed = _parse_sums(_read_bytes(box, SUMS, limits.max_sums_bytes))
        present = set(box.sizes) - {SUMS}
        if missing := set(listed) - present:
            raise BundleError(f"{_one_of(missing)}: listed in {SUMS} but missing")
        if extra := present - set(listed):
            raise BundleError(f"{_one_of(extra)}: an extra file, not listed in {SUMS}")
        digests: dict[str, str] = {}
        hashed = 0
        for name in sorted(listed):
            digest = hashlib.sha256()
            hashed += _read(box, name, limits.max_total_bytes, digest.update)
            digests[name] = digest.hexdigest()
            if digests[name] != listed[name]:
                raise BundleError(
                    f"{name}: sha256 {digests[name]} is not the {listed[name]} {SUMS} lists "
                    "(the file changed)"
                )

        if PROOF not in listed:
            raise BundleError(f"{PROOF} is missing")
        try:
            proof = load_proof(_read_bytes(box, PROOF, MAX_PROOF_FILE_BYTES))
        except ProofError as exc:
            raise BundleError(f"{PROOF}: {exc}") from None
        check = check_run_proof(proof, keys)
        if not check.ok or check.manifest is None or check.checkpoint is None:
            raise BundleError(f"{PROOF}: {check.reason}")
        unconfirmed = [k for k in proof.checkpoint.key_ids if k not in check.checkpoint.key_ids]
        if unconfirmed:
            raise BundleError(
                f"{PROOF}: the checkpoint names key id(s) {', '.join(unconfirmed)} that did not "
                f"sign it with the given key(s) ({', '.join(keys.ids)})"
            )
        key = _bundle_path(proof.manifest_key, PROOF)
        if key not in listed:
            raise BundleError(f"{key}: the manifest {PROOF} names is missing")
        if _read_bytes(box, key, MAX_MANIFEST_BYTES) != proof.manifest_bytes:
            raise BundleError(
                f"{key}: sha256 {digests[key]} is not the manifest {PROOF} carries "
                f"({proof.manifest_sha256})"
            )
        manifest, run_id = check.manifest, proof.run_id

        try:
            objects = bundled_objects(manifest, run_id)
        except EvidenceError as exc:
            raise BundleError(str(exc)) from None
        expected = {INDEX, PROOF, key} | {o.path for o in objects}
        if unexpected := set(listed) - expected:
            raise BundleError(f"{_one_of(unexpected)}: not part of run {run_id}'s evidence")
        if absent := expected - set(listed):
            raise BundleError(f"{_one_of(absent)}: missing from run {run_id}'s evidence")
        for o in objects:
            size, sha = box.sizes[o.path], digests[o.path]
            if (size, sha) != (o.bytes, o.sha256):
                raise BundleError(
                    f"{o.path}: sha256 {sha} ({size} bytes) is not the {o.sha256} "
                    f"({o.bytes} bytes) {key} lists"
                )

        try:
            data = read_run_data(manifest, run_id, box.open)
        except EvidenceError as exc:
            raise BundleError(str(exc)) from None
        page = bundle_page(data, proof)
        # Sizes first: a huge forged page is refused without being read into memory.
        if box.sizes[INDEX] != len(page) or _read_bytes(box, INDEX, len(page)) != page:
            raise BundleError(f"{INDEX}: not the rendering of the bundled data{_why(box)}")
    assert manifest.signature is not None  # check_run_proof verified it
    return BundleReport(
        run_id=run_id,
        manifest_key=key,
        manifest_key_id=manifest.signature.key_id,
        leaf_index=proof.leaf_index,
        checkpoint=check.checkpoint,
        files=len(listed),
        artifacts=sum(1 for o in objects if o.path.startswith(ARTIFACT_DIR)),
        bytes_hashed=hashed,
    )


def _why(box: _Container) -> str:
    """When the page names another page format or Markdown version than this verifier
    renders, say so: the bytes differ because the renderer does, not (only) the data."""
    with box.open(INDEX) as f:
        head = f.read(4096)
    m = _GENERATOR_TAG.search(head)
    theirs = m.group(1).decode("utf-8", "replace") if m else "no generator tag"
    if theirs == GENERATOR:
        return ""
    return f" (it names {printable(theirs)[:200]!r}; this verifier renders {GENERATOR!r})"
