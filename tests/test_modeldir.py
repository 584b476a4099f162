"""Model directories: format 1 (every sampler field flat) still loads and generates the same frames;
what is written now records ``sampler: {name, options, ...}``; weights are checked against their checksums."""

import json
import shutil

import numpy as np
import pytest

from lipstep.errors import IntegrityError, LipstepError
from lipstep.fsutil import CHECKSUMS_NAME
from lipstep.modeldir import FORMAT, bundled_models, load_model, read_info, save_model
from lipstep.pipeline import AvatarPipeline


def _inputs():
    g = np.random.default_rng(0)
    return (g.random((64, 64, 3)) * 255).astype(np.uint8), (0.1 * g.standard_normal(3200)).astype(np.float32)


def test_format_1_directories_load_and_generate_identical_frames(tmp_path):
    src = bundled_models()["fada"]
    new = AvatarPipeline.from_pretrained(src)
    old_dir = tmp_path / "old"
    shutil.copytree(src, old_dir)
    data = json.loads((old_dir / "lipstep.json").read_text())
    sampler = data["sampler"]
    options = sampler.pop("options", {})
    data["sampler"] = {**sampler, "spacing": "trailing", "eta": 0.0, **options}  # the flat format-1 record
    data["format"] = 1
    (old_dir / "lipstep.json").write_text(json.dumps(data))
    info = read_info(old_dir)
    assert info.sampler.options == {"windows": 4, "target": "ddim_eps"} and info.format == FORMAT
    old = AvatarPipeline.from_pretrained(old_dir)
    image, audio = _inputs()
    assert np.array_equal(old(image, audio).frames, new(image, audio).frames)
    save_model(tmp_path / "resaved", info, old.codec, old.audio_encoder, old.denoiser)
    written = json.loads((tmp_path / "resaved" / "lipstep.json").read_text())
    assert written["format"] == FORMAT and written["sampler"]["options"] == {"windows": 4, "target": "ddim_eps"}
    assert "windows" not in written["sampler"]


def test_a_newer_format_is_refused_in_one_line(tmp_path):


    shutil.copytree(bundled_models()["fada"], tmp_path / "m")
    data = json.loads((tmp_path / "m" / "lipstep.json").read_text())
    (tmp_path / "m" / "lipstep.json").write_text(json.dumps({**data, "format": FORMAT + 1}))
    with pytest.raises(LipstepError, match=f"model format {FORMAT + 1} is newer than this lipstep"):
        read_info(tmp_path / "m")


def test_weights_are_checksummed_and_damage_is_one_line(tmp_path):
    _, info, codec, audio, net = load_model(bundled_models()["fada"])  # verified: the bundle has checksums
    save_model(tmp_path / "m", info, codec, audio, net)
    sums = json.loads((tmp_path / "m" / "denoiser" / CHECKSUMS_NAME).read_text())["sha256"]
    assert list(sums) == ["model.safetensors"]
    weights = tmp_path / "m" / "denoiser" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x10  # one flipped bit in a weight: it would still load and generate plausible garbage
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"denoiser/model.safetensors is damaged \(sha256 mismatch\)$"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "denoiser" / CHECKSUMS_NAME).unlink()
    load_model(tmp_path / "m")  # without a checksum list (an older directory) nothing is checked


def test_the_default_model_is_the_fastest_not_judged_below_the_quality_bar(tmp_path, monkeypatch):
    import dataclasses
    import json

    from lipstep import modeldir
    from lipstep.samplers import SamplerInfo

    def model(name, steps, bar):
        info = modeldir.ModelInfo(kind="student", sampler=SamplerInfo(name="fewstep", steps=steps, guidance="embedded"),
                                  trained={} if bar is None else {"quality_bar": {"met": bar, "evidence": "x"}})
        (tmp_path / name).mkdir()
        (tmp_path / name / modeldir.INFO_NAME).write_text(json.dumps(dataclasses.asdict(info)))
        return tmp_path / name

    models = {"fast": model("fast", 1, False), "mid": model("mid", 4, True), "slow": model("slow", 6, None)}
    monkeypatch.setattr(modeldir, "bundled_models", lambda: models)
    monkeypatch.setattr(modeldir, "read_info",  # the records alone (the directories hold no weights)
                        lambda p: modeldir.info_from_dict(json.loads((p / modeldir.INFO_NAME).read_text())))
    assert modeldir.default_model() == "mid"                  # the 1-NFE model is below the bar
    assert modeldir.meets_quality_bar(modeldir.read_info(models["slow"])) is None
    models.pop("mid")
    assert modeldir.default_model() == "slow"                 # never judged counts as usable
    models.pop("slow")
    assert modeldir.default_model() == "fast"                 # only judged-below models: still runs


def test_a_sampler_variant_uses_another_directorys_weights(tmp_path):
    """``components``: a directory with only lipstep.json (the bundled turbo4: turbo1 at 4 steps) loads the weights
    of the directory it names; a copy of it carries its own; a wrong or chained reference is one line."""
    turbo4 = bundled_models()["turbo4"]
    assert sorted(p.name for p in turbo4.iterdir()) == ["lipstep.json"]
    info = read_info(turbo4)
    assert info.components == "../turbo1" and info.sampler.steps == 4
    root, _, _, _, net = load_model("turbo4")
    _, _, _, _, net1 = load_model("turbo1")
    assert root == turbo4 and all(np.array_equal(a, b) for a, b in zip(net.state_dict().values(),
                                                                         net1.state_dict().values(), strict=True))
    pipe = AvatarPipeline.from_pretrained("turbo4")
    image, audio = _inputs()
    assert pipe(image, audio).nfe == 4  # one chunk (0.2 s) at 4 one-pass steps
    copy = pipe.save_pretrained(tmp_path / "copy")
    assert read_info(copy).components == "" and (copy / "denoiser" / "model.safetensors").is_file()
    bad = tmp_path / "bad"
    bad.mkdir()
    for target, what in (("../nowhere", "not a model directory"), ("../variant", "not a model directory")):
        data = json.loads((turbo4 / "lipstep.json").read_text()) | {"components": target}
        (bad / "lipstep.json").write_text(json.dumps(data))
        if target == "../variant":  # a variant of a variant
            shutil.copytree(bad, tmp_path / "variant")
            data["components"] = "../bad"
            (tmp_path / "variant" / "lipstep.json").write_text(json.dumps(data))
        with pytest.raises(LipstepError, match=what):
            load_model(bad)
    data["components"] = "/abs/path"
    (bad / "lipstep.json").write_text(json.dumps(data))
    with pytest.raises(LipstepError, match="components must be a relative directory"):
        read_info(bad)


def _eyes(channels=12, size=8, rate=None, directory=None):
    """A small eye net that draws (+closure on every latent), saved to ``directory`` when given."""
    import torch

    from lipstep.nets.eyes import EyeConfig, EyeNet, save_eye_net

    net = EyeNet(EyeConfig(latent_channels=channels, latent_size=size, hidden=4, dilations=(1,)))
    with torch.no_grad():
        net.out.bias.fill_(1.0)
    if directory is not None:
        save_eye_net(net, directory, train=None if rate is None else {"blinks_per_second": rate})
    return net


def test_an_attached_eye_net_is_saved_loaded_and_blinks_only_where_scheduled(tmp_path):
    import torch

    from lipstep.data.blinks import BlinkSchedule
    from tests.tinypipe import portrait, tiny_pipeline

    pipe = tiny_pipeline(anchor_every=1)
    audio = (0.1 * np.random.default_rng(0).standard_normal(16000 * 3)).astype(np.float32)
    plain = pipe.open_stream(portrait(), seed=3)
    before = np.stack([f.image for f in plain.push(audio) + plain.finish()])
    _eyes(directory=tmp_path / "eyes", rate=3.0)
    pipe.attach_eyes(tmp_path / "eyes")
    assert pipe.info.blinks_per_second == 3.0
    pipe.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "eyes" / "model.safetensors").is_file()
    back = AvatarPipeline.from_pretrained(tmp_path / "model")
    assert back.eyes is not None and back.info.blinks_per_second == 3.0
    stream = back.open_stream(portrait(), seed=3)
    after = np.stack([f.image for f in stream.push(audio) + stream.finish()])
    told = BlinkSchedule(3.0, 25.0, seed=3).frames(0, len(after))
    changed = np.abs(after.astype(int) - before.astype(int)).reshape(len(after), -1).max(1) > 0
    assert told.max() == 1.0 and np.array_equal(changed, told > 0)  # every told frame, and nothing else
    # offline generation takes the same path
    ref, windows = back.encode_image(portrait()), torch.zeros(len(after), 16, 80)
    with_eyes, _ = back.generate_latents(ref, windows, seed=3)
    back.eyes = None
    without, _ = back.generate_latents(ref, windows, seed=3)
    moved = (with_eyes - without).flatten(1).abs().amax(1) > 0
    assert torch.equal(moved, torch.from_numpy(told > 0))


def test_eye_nets_that_do_not_fit_and_blinks_nothing_can_draw_are_refused(tmp_path):
    from tests.tinypipe import tiny_pipeline

    pipe = tiny_pipeline()
    _eyes(size=16, directory=tmp_path / "big", rate=1.0)
    with pytest.raises(LipstepError, match=r"trained on 12x16² latents but the model's codec makes 12x8²"):
        pipe.attach_eyes(tmp_path / "big")
    _eyes(directory=tmp_path / "norate")
    with pytest.raises(LipstepError, match="no blink rate recorded"):
        pipe.attach_eyes(tmp_path / "norate")
    pipe.attach_eyes(tmp_path / "norate", 0.5)  # a rate given: fine
    assert pipe.info.blinks_per_second == 0.5
    pipe.eyes = None
    pipe.save_pretrained(tmp_path / "m")        # a rate with nothing to draw it
    with pytest.raises(LipstepError, match="does not read blinks and there is no eyes/ eye net"):
        AvatarPipeline.from_pretrained(tmp_path / "m")


def test_a_stream_may_ask_for_another_blink_rate_or_none():
    from lipstep.data.blinks import BlinkSchedule
    from tests.tinypipe import portrait, tiny_pipeline

    pipe = tiny_pipeline(anchor_every=1)
    audio = (0.1 * np.random.default_rng(0).standard_normal(16000 * 2)).astype(np.float32)

    def frames(**kw):
        s = pipe.open_stream(portrait(), seed=3, **kw)
        return np.stack([f.image for f in s.push(audio) + s.finish()])

    with pytest.raises(LipstepError, match="nothing to draw blinks with"):
        pipe.open_stream(portrait(), blinks_per_second=1.0)
    plain = frames()
    pipe.eyes = _eyes()
    assert np.array_equal(frames(), plain)                        # the model's rate: 0
    assert np.array_equal(frames(blinks_per_second=0), plain)
    told = BlinkSchedule(4.0, 25.0, seed=3).frames(0, len(plain))
    changed = np.abs(frames(blinks_per_second=4.0).astype(int) - plain).reshape(len(plain), -1).max(1) > 0
    assert np.array_equal(changed, told > 0) and told.any()
    for bad in (-1, 6, float("nan")):
        with pytest.raises(LipstepError, match="blink rate must be in 0..5"):
            pipe.check_blink_rate(bad)
