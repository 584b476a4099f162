"""Atomic writes keep the umask's modes (also over a writer that makes its file 0600); checksum lists
detect damage, allow unchecked older directories, and never name a path outside their directory; every
writer of trained weights records them; `remove_made` cleans up after a failed run."""

import json
import os

import pytest
import torch

from lipstep.codecs.vae import CodecConfig, build_codec, load_codec, save_codec
from lipstep.errors import IntegrityError, LipstepError
from lipstep.fsutil import (
    CHECKSUMS_NAME,
    atomic_dir,
    atomic_path,
    remove_made,
    verify_checksums,
    write_checksums,
)
from lipstep.nets.features import FeatureEncoder, FeatureNetConfig, load_feature_net, save_feature_net
from lipstep.nets.identity import IdentityNet, IdentityNetConfig, load_identity, save_identity
from lipstep.nets.mouthreader import MouthReaderConfig, MouthReaderNet, load_mouth_reader, save_mouth_reader
from lipstep.nets.syncnet import LipSyncConfig, LipSyncNet, load_lipsync, save_lipsync


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


def _identity():
    return IdentityNet(IdentityNetConfig(image_size=32, width=8, embed_dim=16)), save_identity, load_identity


def _lipsync():
    return LipSyncNet(LipSyncConfig(image_size=32, width=8, levels=2, embed_dim=16)), save_lipsync, load_lipsync


def _feature_net():
    return FeatureEncoder(FeatureNetConfig(image_size=32, channels=(8, 16))), save_feature_net, load_feature_net


def _mouth_reader():
    return MouthReaderNet(MouthReaderConfig(width=4)), save_mouth_reader, load_mouth_reader


def _codec():
    return build_codec(CodecConfig(image_size=32, block_out_channels=(8, 8, 8), norm_num_groups=8)), save_codec, \
        load_codec


WEIGHT_WRITERS = {"identity": _identity, "lipsync": _lipsync, "feature_net": _feature_net,
                  "mouth_reader": _mouth_reader, "codec": _codec}


@pytest.mark.parametrize("writer", WEIGHT_WRITERS)
def test_weight_directories_are_checksummed(writer, tmp_path, umask_027):
    """Every writer of trained weights records their sha256 and its loader checks it; a directory
    without a checksum list (written before them, or bundled) loads unchecked."""
    torch.manual_seed(0)
    net, save, load = WEIGHT_WRITERS[writer]()
    save(net, tmp_path / "net")
    weights = tmp_path / "net" / "model.safetensors"
    assert json.loads((tmp_path / "net" / CHECKSUMS_NAME).read_text())["sha256"].keys() == {"model.safetensors"}
    assert oct(weights.stat().st_mode & 0o777) == "0o640"
    data = bytearray(weights.read_bytes())
    data[-2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"net/model.safetensors is damaged \(sha256 mismatch\)$"):
        load(tmp_path / "net")
    (tmp_path / "net" / CHECKSUMS_NAME).unlink()
    load(tmp_path / "net")


@pytest.mark.parametrize("writer", ["identity", "lipsync", "feature_net", "mouth_reader"])
def test_net_directories_replace_only_their_own_kind(writer, tmp_path):
    """`save_net_dir` replaces the whole directory: only an empty one or one of the same network."""
    net, save, load = WEIGHT_WRITERS[writer]()
    (tmp_path / "empty").mkdir()
    save(net, tmp_path / "empty")
    save(net, tmp_path / "empty")                  # its own kind: replaced
    load(tmp_path / "empty")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    other = "lipsync" if writer != "lipsync" else "identity"
    WEIGHT_WRITERS[other]()[1](WEIGHT_WRITERS[other]()[0], tmp_path / "other")
    for target in ("mine", "other"):
        with pytest.raises(LipstepError, match=f"{target} exists and is not an? .* directory; refusing"):
            save(net, tmp_path / target)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_remove_made_removes_folders_files_and_links_last_made_first(tmp_path):
    (tmp_path / "kept").mkdir()
    (tmp_path / "out" / "sub").mkdir(parents=True)
    (tmp_path / "out" / "sub" / "f").write_text("x")
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "kept", target_is_directory=True)
    remove_made([tmp_path / "out", tmp_path / "out" / "sub", tmp_path / "file", tmp_path / "link",
                 tmp_path / "never_made"])
    assert [p.name for p in tmp_path.iterdir()] == ["kept"]  # the link went, not what it pointed at
