"""`spine-pipeline keygen`: a key pair on disk, private 0600, never overwritten, one-line errors."""

from __future__ import annotations

import stat
from pathlib import Path

from click.testing import CliRunner

from spine_pipeline.archive.signing import SigningKey, VerifyKeys
from spine_pipeline.cli import main


def _keygen(out: Path, tmp_path: Path):
    env = {"SPINE_ARCHIVE_URI": str(tmp_path / "archive"), "SPINE_AUDIT_DB": str(tmp_path / "a.db")}
    return CliRunner().invoke(main, ["keygen", "--out", str(out)], env=env)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_keygen_writes_a_private_and_a_public_key(tmp_path: Path, umask_022: None) -> None:
    out = tmp_path / "keys"
    result = _keygen(out, tmp_path)
    assert result.exit_code == 0, result.output
    private, public = out / "spine-signing.pem", out / "spine-verify.pem"
    assert (_mode(out), _mode(private), _mode(public)) == (0o700, 0o600, 0o644)
    key = SigningKey.load(str(private))
    lines = result.stdout.splitlines()
    assert lines[0] == f"key id {key.key_id}"
    assert str(private.absolute()) in lines[1] and str(public.absolute()) in lines[2]
    assert lines[3] == (
        f"set SPINE_SIGNING_KEY={private.absolute()} and SPINE_VERIFY_KEY={public.absolute()}"
    )
    assert VerifyKeys.load(str(public)).ids == (key.key_id,)
    for line in private.read_text().splitlines()[1:-1]:
        assert line not in result.output  # the private key is never printed


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    assert _keygen(tmp_path, tmp_path).exit_code == 0
    before = (tmp_path / "spine-signing.pem").read_bytes()
    result = _keygen(tmp_path, tmp_path)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"error: refusing to overwrite {str(tmp_path / 'spine-signing.pem')!r}: it exists"
    ]
    assert (tmp_path / "spine-signing.pem").read_bytes() == before
    for line in before.decode().splitlines()[1:-1]:
        assert line not in result.output


def test_keygen_refuses_a_symlink_at_the_target(tmp_path: Path) -> None:
    out, victim = tmp_path / "out", tmp_path / "victim.pem"
    out.mkdir()
    (out / "spine-signing.pem").symlink_to(victim)
    result = _keygen(out, tmp_path)
    assert result.exit_code == 1 and "refusing to overwrite" in result.stderr
    assert "Traceback" not in result.output
    assert not victim.exists() and not (out / "spine-verify.pem").exists()


def test_keygen_needs_out(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["keygen"])
    assert result.exit_code == 2 and "--out" in result.stderr
