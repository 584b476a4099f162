"""Checkpoints a hostile or unlucky disk can hand back: crafted pickles and pointers never run or lead
anywhere, damaged checkpoints are found by their checksums and skipped, a ``kill -9`` at any moment of
training resumes bit-exactly, temporaries are cleaned, outputs respect the umask, TensorBoard does
not show resumed steps twice, and a failed run leaves no folder it made."""

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tests.train.test_loop import CFG, ToyData, ToyMethod

import lipstep
from lipstep.distill.method import Built
from lipstep.errors import IntegrityError, LipstepError, UnsafeFile
from lipstep.fsutil import CHECKSUMS_NAME, atomic_path, write_json_atomic
from lipstep.train.loop import TrainConfig, latest_checkpoint, train
from lipstep.train.runner import run_recipe

REPO = Path(__file__).resolve().parents[2]


def _cfg(steps, every=5, keep=3):
    return TrainConfig(steps=steps, checkpoint_every=every, keep_checkpoints=keep, **CFG)


def _train(out, steps, resume=False, **kw):
    method = ToyMethod()
    state = train(method, ToyData(), _cfg(steps, **kw), out, resume=resume, progress=False)
    return method, state


def _weights(state):
    return {**state.modules["model"].state_dict(), **{f"ema.{k}": v for k, v in state.emas["model"].shadow.state_dict().items()}}


def _assert_same(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """15 uninterrupted steps: the losses and the final state every resumed run must reproduce exactly."""
    return _train(tmp_path_factory.mktemp("full"), 15)


@pytest.fixture
def no_fsync(monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # durability is not under test here; speed is


# ---------------------------------------------------------------------------------------------
# what a checkpoint holds


def test_checkpoint_is_data_only_and_checksummed(tmp_path, no_fsync):
    _train(tmp_path, 5)
    ckpt = latest_checkpoint(tmp_path)
    saved = torch.load(ckpt / "train_state.pt", weights_only=True)  # no pickled objects
    assert saved["step"] == 5 and isinstance(saved["rng"], torch.Tensor)
    sums = json.loads((ckpt / CHECKSUMS_NAME).read_text())["sha256"]
    assert sorted(sums) == ["model/ema.safetensors", "model/model.safetensors", "train_state.pt"]


# ---------------------------------------------------------------------------------------------
# crafted files


class Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def _plant_pickle(ckpt: Path, marker: Path):
    saved = torch.load(ckpt / "train_state.pt", weights_only=True)
    torch.save({**saved, "step": Payload(marker)}, ckpt / "train_state.pt")
    (ckpt / CHECKSUMS_NAME).unlink()  # an attacker could as well rewrite it


def test_crafted_train_state_does_not_run(tmp_path, no_fsync):
    _train(tmp_path / "run", 5)
    marker = tmp_path / "marker"
    _plant_pickle(tmp_path / "run" / "checkpoints" / "step_000005", marker)
    with pytest.raises(UnsafeFile, match=r"step_000005/train_state.pt is refused") as e:
        _train(tmp_path / "run", 10, resume=True)
    assert "\n" not in str(e.value) and not marker.exists()
    torch.load(tmp_path / "run" / "checkpoints" / "step_000005" / "train_state.pt", weights_only=False)
    assert marker.exists()  # the control: the payload does run when unpickled without weights_only


def test_crafted_latest_is_skipped_for_an_intact_earlier_one(tmp_path, uninterrupted, caplog, no_fsync):
    _train(tmp_path, 10)
    marker = tmp_path / "marker"
    _plant_pickle(tmp_path / "checkpoints" / "step_000010", marker)
    with caplog.at_level(logging.WARNING, logger="lipstep.train.loop"):
        _, state = _train(tmp_path, 15, resume=True)
    assert not marker.exists()
    (warning,) = [r.getMessage() for r in caplog.records if "resuming from" in r.getMessage()]
    assert "train_state.pt is refused" in warning and warning.endswith("step_000005 instead")
    _assert_same(state, uninterrupted[1])


@pytest.mark.parametrize("pointer", ["../../elsewhere/step_000005", "ABSOLUTE", "step_000005/../../elsewhere",
                                     "step_000007", "POINTER_SYMLINK", "garbage\n\x00"])
def test_latest_pointer_cannot_leave_the_run(tmp_path, pointer, no_fsync):
    """A pointer to a crafted checkpoint outside the run (or via a symlink) is refused in one line."""
    _train(tmp_path / "elsewhere", 5)
    marker = tmp_path / "marker"
    _plant_pickle(tmp_path / "elsewhere" / "checkpoints" / "step_000005", marker)
    run = tmp_path / "run"
    _train(run, 5)
    root = run / "checkpoints"
    outside = tmp_path / "elsewhere" / "checkpoints" / "step_000005"
    (root / "latest").unlink()
    if pointer == "POINTER_SYMLINK":
        (tmp_path / "p").write_text("step_000005\n")
        (root / "latest").symlink_to(tmp_path / "p")
    elif pointer == "step_000007":  # a step directory that is a symlink out of the run
        (root / "step_000007").symlink_to(outside)
        (root / "latest").write_text(pointer)
    else:
        (root / "latest").write_text(str(outside) if pointer == "ABSOLUTE" else pointer)
    with pytest.raises(UnsafeFile, match="checkpoints/latest") as e:
        _train(run, 10, resume=True)
    assert "\n" not in str(e.value) and not marker.exists()


# ---------------------------------------------------------------------------------------------
# damaged checkpoints


def _truncate(path: Path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip(path: Path):
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated weights": (lambda c: _truncate(c / "model" / "model.safetensors"), "model.safetensors is damaged"),
    "truncated train state": (lambda c: _truncate(c / "train_state.pt"), "train_state.pt is damaged"),
    "flipped byte": (lambda c: _flip(c / "model" / "ema.safetensors"), r"ema.safetensors is damaged \(sha256 mismatch\)"),
    "missing train state": (lambda c: (c / "train_state.pt").unlink(), "train_state.pt is missing"),
    "missing directory": (lambda c: os.rename(c, c.parent / ".gone"), "step_000010 is missing"),
    "unchecksummed and truncated": (lambda c: ((c / CHECKSUMS_NAME).unlink(), _truncate(c / "model" / "model.safetensors")),
                                    "model.safetensors is damaged or truncated"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_latest_falls_back_to_the_previous_checkpoint(tmp_path, uninterrupted, damage, caplog, no_fsync):
    first, _ = _train(tmp_path, 10)
    hurt, message = DAMAGE[damage]
    hurt(tmp_path / "checkpoints" / "step_000010")
    with caplog.at_level(logging.WARNING, logger="lipstep.train.loop"):
        second, state = _train(tmp_path, 15, resume=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert re.search(message, warnings[0]), warnings
    assert warnings[0].endswith("resuming from " + str(tmp_path / "checkpoints" / "step_000005") + " instead")
    assert first.losses[:5] + second.losses == uninterrupted[0].losses  # steps 5..14 again, bit for bit
    _assert_same(state, uninterrupted[1])
    assert latest_checkpoint(tmp_path).name == "step_000015"


def test_no_intact_checkpoint_is_one_error(tmp_path, no_fsync):
    _train(tmp_path, 5)
    _flip(tmp_path / "checkpoints" / "step_000005" / "model" / "model.safetensors")
    with pytest.raises(IntegrityError, match=r"step_000005/model/model.safetensors is damaged \(sha256 mismatch\)$"):
        _train(tmp_path, 10, resume=True)
    _train(tmp_path / "two", 10)
    for step in ("step_000005", "step_000010"):
        _truncate(tmp_path / "two" / "checkpoints" / step / "train_state.pt")
    with pytest.raises(IntegrityError, match=r"no intact checkpoint in .*step_000010/train_state.pt is damaged .*"
                                             r"\(1 more damaged\)$") as e:
        _train(tmp_path / "two", 15, resume=True)
    assert "\n" not in str(e.value)


class WiderToy(ToyMethod):
    """The toy with a differently shaped layer: a checkpoint of `ToyMethod` is not its own."""

    def __init__(self):
        super().__init__()
        self.model = torch.nn.Linear(4, 2)

    def loss(self, role, batch, step, generator):
        return self.modules["model"](batch["x"]).pow(2).mean(), {}


def test_a_checkpoint_of_another_shape_is_one_error_not_a_traceback(tmp_path, no_fsync):
    """Resuming with settings that change a tensor's shape: a one-line `LipstepError` naming the file."""
    _train(tmp_path, 5)
    with pytest.raises(LipstepError, match=r"step_000005/model/model.safetensors: weights do not match the model "
                                           r"\(size mismatch for weight") as e:
        train(WiderToy(), ToyData(), _cfg(10), tmp_path, resume=True, progress=False)
    assert "\n" not in str(e.value)


def test_a_train_state_of_another_run_is_one_error(tmp_path, no_fsync):
    """A train state whose optimizer groups do not fit this run (e.g. another recipe's, same role names)."""
    _train(tmp_path, 5)
    ckpt = tmp_path / "checkpoints" / "step_000005"
    saved = torch.load(ckpt / "train_state.pt", weights_only=True)
    saved["optimizers"]["model"]["param_groups"].append(dict(saved["optimizers"]["model"]["param_groups"][0]))
    torch.save(saved, ckpt / "train_state.pt")
    (ckpt / CHECKSUMS_NAME).unlink()    # as a folder from before checksums: read, not verified
    with pytest.raises(LipstepError, match=r"train_state.pt: the train state does not match this run \(") as e:
        _train(tmp_path, 10, resume=True)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# kill -9 at any moment


CHILD = r"""
import os, signal, sys, threading
from pathlib import Path
import shutil, torch, torch.utils.tensorboard, safetensors.torch
import lipstep.train.loop as loop
from lipstep.train.loop import TrainConfig
from tests.train.test_loop import CFG, ToyData, ToyMethod

root, steps, every = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
cfg = TrainConfig(steps=steps, checkpoint_every=every, keep_checkpoints=1, **CFG)
torch.set_num_threads(1)
loop.train(ToyMethod(), ToyData(), cfg, root / "warm-up", progress=False)  # lazy imports happen once, before forking
count = [0]

def hooked(fn):
    def call(*args, **kwargs):
        if threading.current_thread() is threading.main_thread():
            count[0] += 1
            if count[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        return fn(*args, **kwargs)
    return call

k = 0
while True:  # kill before the k-th write, rename, fsync, removal or training step, until a run is not killed
    k += 1
    pid = os.fork()
    if pid == 0:
        kill_at = k
        os.fsync = lambda fd: None  # what fsync guards against is a power loss, not a kill; on a busy disk it is slow
        for mod, name in [(os, "fsync"), (os, "rename"), (os, "replace"), (shutil, "rmtree"), (loop, "save_file"),
                          (torch, "save"), (ToyMethod, "loss")]:
            setattr(mod, name, hooked(getattr(mod, name)))
        loop.train(ToyMethod(), ToyData(), cfg, root / f"k{k:03d}", progress=False)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
        sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_kill_at_any_moment_then_resume_is_bit_exact(tmp_path, no_fsync):
    """Every write, rename, fsync and removal of two checkpoint writes (and every step) is, in turn, the moment
    of a kill -9; the resumed run (or, killed before any checkpoint, the restarted one) ends bit-identical."""
    steps, every = 4, 2
    env = {**os.environ, "PYTHONPATH": str(Path(lipstep.__file__).parents[1])}
    subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), str(steps), str(every)], cwd=REPO, env=env,
                   check=True, timeout=300)
    runs = sorted(p for p in tmp_path.iterdir() if p.name.startswith("k"))
    _, reference = _train(tmp_path / "reference", steps, every=every, keep=1)
    resumed = 0
    for run in runs[:-1]:  # the last run was not killed
        has_checkpoint = latest_checkpoint(run) is not None
        resumed += has_checkpoint
        _, state = _train(run, steps, resume=has_checkpoint, every=every, keep=1)
        _assert_same(state, reference)
        assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")], run
    assert len(runs) > 20 and resumed > len(runs) // 2


# ---------------------------------------------------------------------------------------------
# temporaries, umask, TensorBoard


def test_stale_temporaries_are_cleaned_on_resume(tmp_path, no_fsync):
    _train(tmp_path, 5)
    root = tmp_path / "checkpoints"
    stale = [root / ".step_000010.tmp-0123abcd", root / ".step_000010.k2j4_x9q", root / ".step_000003.del-89abcdef"]
    for d in stale:
        (d / "model").mkdir(parents=True)
        (d / "model" / "model.safetensors").write_bytes(b"half")
    (root / ".latest.abcd1234").write_text("step_000010")
    (root / "notes.txt").write_text("mine")
    _train(tmp_path, 6, resume=True)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "notes.txt", "step_000005", "step_000006"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_respect_the_umask(tmp_path, umask, no_fsync):
    old = os.umask(umask)
    try:
        _train(tmp_path / "run", 2, every=2)
        write_json_atomic(tmp_path / "a.json", {})
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    ckpt = tmp_path / "run" / "checkpoints" / "step_000002"
    files = [ckpt / "train_state.pt", ckpt / CHECKSUMS_NAME, ckpt / "model" / "model.safetensors",
             ckpt.parent / "latest", tmp_path / "a.json", tmp_path / "b.bin"]
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {f.name: oct(0o666 & ~umask) for f in files}
    assert {oct(d.stat().st_mode & 0o777) for d in (ckpt, ckpt / "model")} == {oct(0o777 & ~umask)}


def test_tensorboard_purges_the_steps_a_resumed_run_repeats(tmp_path, no_fsync):
    _train(tmp_path, 5)
    logs = tmp_path / "logs"
    first = set(logs.iterdir())
    _train(tmp_path, 10, resume=True)
    (new,) = set(logs.iterdir()) - first
    starts = [e.step for e in EventFileLoader(str(new)).Load() if e.HasField("session_log")]
    assert starts == [5]  # TensorBoard drops what the first run logged from step 5 on


# ---------------------------------------------------------------------------------------------
# the runner: no leftovers


class ToyRecipe:
    """A recipe around `ToyMethod` whose build writes a file first, as real recipes do."""

    name = "toy"

    def __init__(self, nan_at=None, fail=False, pairs=False):
        self.nan_at, self.fail, self.pairs = nan_at, fail, pairs

    def build(self, prepared, out, *, resume, progress):
        out.mkdir(parents=True, exist_ok=True)
        (out / "mouth_head.json").write_text("{}")
        if self.pairs:
            (out / "pairs").mkdir()
            (out / "pairs" / "part_00000.safetensors").write_bytes(b"expensive")
        if self.fail:
            raise LipstepError("bad input found while building")
        return Built(method=ToyMethod(nan_at=self.nan_at), dataset=ToyData(), train=_cfg(10), info=None, codec=None,
                     audio=None, export_role="model", run_config=_cfg(10))


@pytest.fixture
def prepared(tmp_path):
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared" / "manifest.jsonl").write_text("")
    return tmp_path / "prepared"


def test_resume_into_a_new_folder_writes_nothing(tmp_path, prepared):
    with pytest.raises(LipstepError, match="holds no checkpoint"):
        run_recipe(ToyRecipe(), prepared, tmp_path / "new", resume=True, progress=False)
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(LipstepError, match="no complete checkpoint"):
        train(ToyMethod(), ToyData(), _cfg(2), tmp_path / "empty", resume=True, run_config=_cfg(2), progress=False)
    assert list((tmp_path / "empty").iterdir()) == []  # no config.json


def test_a_failed_run_removes_only_the_folder_it_made(tmp_path, prepared, no_fsync):
    with pytest.raises(LipstepError, match="bad input"):
        run_recipe(ToyRecipe(fail=True), prepared, tmp_path / "a" / "b", progress=False)
    assert not (tmp_path / "a").exists()
    with pytest.raises(LipstepError, match="loss is nan"):  # after config.json and logs/, before any checkpoint
        run_recipe(ToyRecipe(nan_at=3), prepared, tmp_path / "nan", progress=False)
    assert not (tmp_path / "nan").exists()
    (tmp_path / "mine").mkdir()
    with pytest.raises(LipstepError, match="bad input"):
        run_recipe(ToyRecipe(fail=True), prepared, tmp_path / "mine", progress=False)
    assert (tmp_path / "mine").is_dir()  # the user's folder stays
    with pytest.raises(LipstepError, match="bad input"):
        run_recipe(ToyRecipe(fail=True, pairs=True), prepared, tmp_path / "pairs", progress=False)
    assert (tmp_path / "pairs" / "pairs" / "part_00000.safetensors").is_file()  # work of value stays
    with pytest.raises(LipstepError, match="loss is nan"):
        run_recipe(ToyRecipe(nan_at=7), prepared, tmp_path / "late", progress=False)
    assert load_file(str(latest_checkpoint(tmp_path / "late") / "model" / "model.safetensors"))  # checkpoint kept
