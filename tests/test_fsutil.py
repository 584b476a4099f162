"""Atomic writes keep the umask's modes (also over a writer that makes its file 0600); checksum lists
detect damage, allow unchecked older directories, and never name a path outside their directory."""

import json
import os

import pytest
import torch

from lipstep.errors import IntegrityError
from lipstep.fsutil import CHECKSUMS_NAME, atomic_dir, atomic_path, verify_checksums, write_checksums
from lipstep.nets.identity import IdentityNet, IdentityNetConfig, load_identity, save_identity


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def test_atomic_writes_respect_the_umask(tmp_path, umask_027):
    with atomic_path(tmp_path / "a.bin") as tmp:
        tmp.write_bytes(b"x")
        os.chmod(tmp, 0o600)  # as safetensors' save_file leaves its file
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "sub").mkdir(mode=0o700)
        (tmp / "sub" / "f").write_bytes(b"x")
        os.chmod(tmp / "sub" / "f", 0o600)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in (tmp_path / "a.bin", tmp_path / "d" / "sub" / "f",
                                                           tmp_path / "d", tmp_path / "d" / "sub")}
    assert modes == {"a.bin": "0o640", "f": "0o640", "d": "0o750", "sub": "0o750"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_checksums_find_damage_and_missing_files(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"weights")
    assert not verify_checksums(tmp_path)  # nothing recorded: nothing checked
    write_checksums(tmp_path)
    assert verify_checksums(tmp_path)
    (tmp_path / "w.safetensors").write_bytes(b"weightz")
    with pytest.raises(IntegrityError, match=r"w.safetensors is damaged \(sha256 mismatch\)$"):
        verify_checksums(tmp_path)
    (tmp_path / "w.safetensors").unlink()
    with pytest.raises(IntegrityError, match=r"w.safetensors is missing \(listed in checksums.json\)$"):
        verify_checksums(tmp_path)


@pytest.mark.parametrize("name", ["../outside", "/etc/passwd", "a/../../b"])
def test_a_checksum_list_cannot_name_outside_paths(tmp_path, name):
    (tmp_path / CHECKSUMS_NAME).write_text(json.dumps({"sha256": {name: "0" * 64}}))
    with pytest.raises(IntegrityError, match="checksums.json is damaged .*not inside"):
        verify_checksums(tmp_path)


def test_net_directories_are_checksummed(tmp_path, umask_027):
    torch.manual_seed(0)
    save_identity(IdentityNet(IdentityNetConfig(image_size=32, width=8, embed_dim=16)), tmp_path / "net")
    weights = tmp_path / "net" / "model.safetensors"
    assert oct(weights.stat().st_mode & 0o777) == "0o640"
    data = bytearray(weights.read_bytes())
    data[-2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"net/model.safetensors is damaged \(sha256 mismatch\)$"):
        load_identity(tmp_path / "net")
    (tmp_path / "net" / CHECKSUMS_NAME).unlink()
    load_identity(tmp_path / "net")
