"""The bad-input matrix: every verb refuses bad input in one line, with exit status 2, leaving nothing behind.

Each case runs the real entry point in this process (`lipstep.cli.main`) on small bad inputs made here
(empty files, garbage bytes, truncated media, a text file named .safetensors, manifests with path-like
ids, ...) and checks: exit status 2; exactly one line on stderr, ``error: ...``, naming the problem (the
file or the option); no traceback; no file or folder left in the output location. No case loads a
network for long or generates anything: each refusal has to come before the work. The security cases
of issue 21 (path-escaping manifest ids; the I3D, TorchScript, only from ``--i3d``) are here too.
"""

import errno
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from lipstep.cli import main
from lipstep.codecs.vae import CodecConfig, build_codec, save_codec
from lipstep.data.media import write_image

SR = 16000
TEACHER = Path(__file__).resolve().parents[1] / "src" / "lipstep" / "weights" / "teacher"


def _row(clip_id, split="test", **extra) -> str:
    return json.dumps({"id": clip_id, "shard": f"shards/{clip_id}.npz", "split": split, "frames": 10,
                       "size": 64, **extra})


def _prepared(root: Path, text: str | bytes) -> Path:
    root.mkdir(parents=True)
    path = root / "manifest.jsonl"
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text + "\n")
    return root


def _model_dir(root: Path, weights: bytes) -> Path:
    """The bundled teacher's files, with `weights` as the denoiser's model.safetensors."""
    (root / "denoiser").mkdir(parents=True)
    for name in ("lipstep.json", "audio/config.json", "codec/config.json", "denoiser/config.json"):
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_bytes((TEACHER / name).read_bytes())
    (root / "denoiser" / "model.safetensors").write_bytes(weights)
    return root


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Every bad (and a few good) input the cases name as ``{i}/...``, made once."""
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    write_image(d / "face.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    (d / "trunc.png").write_bytes((d / "face.png").read_bytes()[:100])
    wav = (0.1 * rng.standard_normal(SR)).astype(np.float32)
    sf.write(d / "ok.wav", wav, SR, subtype="FLOAT")
    for name, value in (("nan.wav", np.nan), ("inf.wav", np.inf)):
        bad = wav.copy()
        bad[100] = value
        sf.write(d / name, bad, SR, subtype="FLOAT")
    (d / "trunc.wav").write_bytes((d / "ok.wav").read_bytes()[:20])
    (d / "text.wav").write_text("this is not audio\n")
    for name in ("empty.wav", "empty.png"):
        (d / name).write_bytes(b"")
    (d / "garbage.wav").write_bytes(rng.bytes(3000))
    (d / "garbage.png").write_bytes(rng.bytes(3000))
    (d / "text.safetensors").write_text("not weights\n")
    (d / "arc.onnx").write_text("not an onnx model\n")
    (d / "i3d.pt").write_bytes(rng.bytes(500))
    (d / "syncnet_v2.model").write_bytes(rng.bytes(500))
    (d / "inception.pth").write_bytes(rng.bytes(500))
    (d / "noev").mkdir()                      # an evaluators directory with none in it: nothing loads
    _prepared(d / "prep", _row("c1"))         # a valid manifest (its shard is never read)
    _prepared(d / "id_parent", _row("../../escape"))
    _prepared(d / "id_absolute", _row(str(d / "abs_escape")))
    _prepared(d / "id_slash", _row("a/b"))
    _prepared(d / "id_dotdot", _row(".."))
    _prepared(d / "id_control", _row("clip\nname"))
    _prepared(d / "manifest_garbage", "{not json")
    _prepared(d / "manifest_latin1", "é".encode("latin-1"))
    _prepared(d / "manifest_list", "[1, 2]")
    _prepared(d / "manifest_frames", _row("c1").replace('"frames": 10', '"frames": "ten"'))
    (d / "no_manifest").mkdir()
    (d / "only_bad").mkdir()
    (d / "only_bad" / "a.mp4").write_bytes(rng.bytes(2000))
    (d / "only_bad" / "b.mov").write_text("not a video")
    (d / "no_videos").mkdir()
    (d / "no_videos" / "notes.txt").write_text("no videos here")
    _prepared(d / "world_garbage", "{not json")
    _model_dir(d / "model_text_weights", b"not weights")
    (d / "model_bad_json").mkdir()
    (d / "model_bad_json" / "lipstep.json").write_text("{garbage")
    codec = d / "codec_damaged"
    codec.mkdir()
    (codec / "config.json").write_text(json.dumps({"_type": "CodecConfig", "image_size": 32,
                                                   "block_out_channels": [8, 8, 8], "norm_num_groups": 8}))
    (codec / "model.safetensors").write_text("not weights\n")
    (d / "codec_text_config").mkdir()
    (d / "codec_text_config" / "config.json").write_text("not json")
    for name, target in (("codec_self", "codec_self"), ("codec_cycle_a", "codec_cycle_b"),
                         ("codec_cycle_b", "codec_cycle_a")):  # config.json paths that lead back to themselves
        (d / name).mkdir()
        (d / name / "config.json").write_text(json.dumps({"_type": "CodecConfig", "path": str(d / target)}))
    _flip_last_byte(save_codec(build_codec(CodecConfig(image_size=32, block_out_channels=(8, 8, 8),
                                                       norm_num_groups=8)), d / "codec_flipped") / "model.safetensors")
    (d / "text.model").write_text("not weights\n")   # torch.load: a bare KeyError
    (d / "empty.model").write_bytes(b"")
    _prepared(d / "world_prep", _row("c1", split="train"))
    info = json.loads((TEACHER / "lipstep.json").read_text())
    for name, change in (("model_info_empty", None), ("model_fps_nan", {"fps": float("nan")}),
                         ("model_motion_frames", {"motion_frames": 20})):
        model = _model_dir(d / name, (TEACHER / "denoiser" / "model.safetensors").read_bytes())
        (model / "lipstep.json").write_text(json.dumps({**info, **change} if change else {}))
    sf.write(d / "1hz.wav", np.zeros(64, np.float32), 1, subtype="FLOAT")
    (d / "world_row_null").mkdir()
    (d / "world_row_null" / "manifest.jsonl").write_text("null\n")
    _prepared(d / "prep_bad_shard", _row("c1", split="train"))
    (d / "prep_bad_shard" / "shards").mkdir()
    (d / "prep_bad_shard" / "shards" / "c1.npz").write_bytes(rng.bytes(300))
    (d / "run_list_config").mkdir()
    (d / "run_list_config" / "config.json").write_text("[]\n")
    _latents_files(d)
    return d


def _latents_files(d: Path) -> None:
    """Latents files (hybrid mode) that decode must refuse: another codec, a model that is gone, no header."""
    import torch
    from safetensors.torch import save_file

    from lipstep.hybrid import LatentsMeta, write_latents

    meta = LatentsMeta(frames=2, fps=25.0, sample_rate=SR, chunk_frames=8, latent_shape=[12, 32, 32], image_size=64,
                       codec_sha256="0" * 64, model=str(TEACHER))
    latents, audio = torch.zeros(2, 12, 32, 32), np.zeros(1280, np.float32)
    write_latents(d / "other_codec.safetensors", latents, audio, meta)
    meta.model = str(d / "gone_model")
    write_latents(d / "gone_model.safetensors", latents, audio, meta)
    save_file({"latents": latents}, str(d / "plain.safetensors"))


def gen(image: str = "face.png", audio: str = "ok.wav", out: str = "out.mp4") -> str:
    """A `generate` command line ("{i}": the inputs folder)."""
    return f"generate -i {{i}}/{image} -a {{i}}/{audio} -o {out}"


G = gen()
E = "eval -d {i}/prep -o out --evaluators {i}/noev"
B = "bench -m teacher -o out"

# (case id, command line, what the error line must say); "{i}" is the inputs folder and outputs go to
# the current directory, a fresh tmp_path holding `taken` (a file), `existing/` (an empty folder) and
# `readonly/` (mode 0555)
CASES = [
    # usage errors: typer's boxes become one line
    ("usage_bad_int", G + " --steps abc", r"lipstep generate: Invalid value for '--steps'"),
    ("usage_missing_option", "generate -i {i}/face.png -a {i}/ok.wav", r"Missing option '--out'"),
    ("usage_unknown_option", G + " --bogus", r"No such option: --bogus"),
    ("usage_extra_argument", G + " extra", r"unexpected extra argument.*extra"),
    ("usage_unknown_command", "bogus", r"No such command 'bogus'"),
    ("usage_unknown_subcommand", "train bogus", r"lipstep train: No such command 'bogus'"),
    ("usage_bad_float", "synth -o out --seconds many", r"Invalid value for '--seconds'"),
    ("usage_models_extra", "models extra", r"lipstep models: Got unexpected extra argument"),
    # generate: inputs
    ("generate_image_missing", gen(image="nosuch.png"), r"nosuch\.png: file not found"),
    ("generate_image_empty", gen(image="empty.png"), r"empty\.png: file is empty"),
    ("generate_image_garbage", gen(image="garbage.png"), r"garbage\.png: not an image"),
    ("generate_image_truncated", gen(image="trunc.png"), r"trunc\.png: not an image"),
    ("generate_image_folder", "generate -i {i} -a {i}/ok.wav -o out.mp4", r"is a directory"),
    ("generate_audio_missing", gen(audio="nosuch.wav"), r"nosuch\.wav: file not found"),
    ("generate_audio_empty", gen(audio="empty.wav"), r"empty\.wav: file is empty"),
    ("generate_audio_garbage", gen(audio="garbage.wav"), r"garbage\.wav: cannot decode"),
    ("generate_audio_truncated", gen(audio="trunc.wav"), r"trunc\.wav: cannot decode"),
    ("generate_audio_text", gen(audio="text.wav"), r"text\.wav: cannot decode"),
    ("generate_audio_nan", gen(audio="nan.wav"), r"nan\.wav: contains NaN or inf"),
    ("generate_audio_inf", gen(audio="inf.wav"), r"inf\.wav: contains NaN or inf"),
    ("generate_audio_no_stream", gen(audio="face.png"), r"face\.png: no audio stream"),
    # generate: options
    ("generate_out_suffix", gen(out="out.txt"), r"--out out\.txt: use a \.mp4"),
    ("generate_out_is_folder", gen(out="existing"), r"--out existing: is a directory"),
    ("generate_out_under_file", gen(out="taken/out.mp4"),
     r"--out taken/out\.mp4: .*taken is not a directory"),
    ("generate_out_readonly", gen(out="readonly/out.mp4"), r"readonly is not writable"),
    ("generate_out_readonly_fs", G, r"--out out\.mp4: .* read-only filesystem"),
    ("generate_out_full", G, r"--out out\.mp4: no space left"),
    ("generate_device_misspelt", G + " --device cdua", r"--device 'cdua': not a torch device"),
    ("generate_device_cuda", G + " --device cuda", r"--device cuda: CUDA is not available"),
    ("generate_device_index", G + " --device cuda:99", r"--device cuda:99: "),
    ("generate_device_empty", G + " --device ''", r"--device '': not a torch device"),
    ("generate_device_meta", G + " --device meta", r"--device meta: lipstep runs on cpu"),
    ("generate_cfg_nan", G + " --cfg-audio nan", r"--cfg-audio must be a guidance scale .* got nan"),
    ("generate_cfg_inf", G + " --cfg-ref inf", r"--cfg-ref must be a guidance scale .* got inf"),
    ("generate_cfg_negative", G + " --cfg-ref -1", r"--cfg-ref must be a guidance scale .* got -1"),
    ("generate_cfg_absurd", G + " --cfg-audio 1000", r"--cfg-audio must be a guidance scale .* got 1000"),
    ("generate_steps_zero", G + " --steps 0", r"--steps must be in 1\.\.1000, got 0"),
    ("generate_max_seconds_nan", G + " --max-seconds nan", r"--max-seconds must be positive"),
    ("generate_model_missing", G + " -m {i}/nosuch", r"nosuch' is neither a directory nor a bundled model"),
    ("generate_model_text_file", G + " -m {i}/text.safetensors",
     r"text\.safetensors' is neither a directory"),
    ("generate_model_bad_json", G + " -m {i}/model_bad_json", r"model_bad_json/lipstep\.json"),
    ("generate_model_text_weights", G + " -m {i}/model_text_weights",
     r"model_text_weights/denoiser/model\.safetensors"),
    # eval: manifests (the security cases: ids name output files)
    ("eval_id_parent", "eval -d {i}/id_parent -o out",
     r"id_parent/manifest\.jsonl:1: clip id '\.\./\.\./escape'"),
    ("eval_id_absolute", "eval -d {i}/id_absolute -o out",
     r"id_absolute/manifest\.jsonl:1: clip id '/.*abs_escape'"),
    ("eval_id_slash", "eval -d {i}/id_slash -o out", r"id_slash/manifest\.jsonl:1: clip id 'a/b'"),
    ("eval_id_dotdot", "eval -d {i}/id_dotdot -o out", r"id_dotdot/manifest\.jsonl:1: clip id '\.\.'"),
    ("eval_id_control_character", "eval -d {i}/id_control -o out",
     r"id_control/manifest\.jsonl:1: clip id 'clip\\nname'"),
    ("eval_manifest_garbage", "eval -d {i}/manifest_garbage -o out",
     r"manifest_garbage/manifest\.jsonl:1: not valid"),
    ("eval_manifest_not_utf8", "eval -d {i}/manifest_latin1 -o out",
     r"manifest_latin1/manifest\.jsonl: cannot read"),
    ("eval_manifest_row_list", "eval -d {i}/manifest_list -o out",
     r"manifest_list/manifest\.jsonl:1: a prepared"),
    ("eval_manifest_frames_text", "eval -d {i}/manifest_frames -o out",
     r"manifest_frames/manifest\.jsonl:1: .*integer"),
    ("eval_no_manifest", "eval -d {i}/no_manifest -o out", r"no_manifest has no manifest\.jsonl"),
    ("eval_data_missing", "eval -d {i}/nosuch -o out", r"nosuch does not exist"),
    # eval: options and evaluator files
    ("eval_out_file", E + " -o taken", r"--out taken: exists and is not a directory"),
    ("eval_out_full", E, r"--out out: no space left"),
    ("eval_device_misspelt", E + " --device gpu", r"--device 'gpu': not a torch device"),
    ("eval_cfg_nan", E + " --cfg-audio nan", r"--cfg-audio must be a guidance scale"),
    ("eval_cfg_negative", E + " --cfg-ref -0.5", r"--cfg-ref must be a guidance scale"),
    ("eval_split_bogus", E + " --split bogus", r"split must be train, val or test"),
    ("eval_audio_shift_inf", E + " --audio-shift inf", r"audio_shift must be a finite number"),
    ("eval_arcface_not_a_model", E + " --arcface {i}/arc.onnx", r"arc\.onnx"),
    ("eval_arcface_missing", E + " --arcface {i}/nosuch.onnx", r"nosuch\.onnx not found"),
    ("eval_i3d_garbage", E + " --i3d {i}/i3d.pt", r"i3d\.pt: not a TorchScript module"),
    ("eval_i3d_missing", E + " --i3d {i}/nosuch.pt", r"nosuch\.pt: I3D file not found"),
    ("eval_syncnet_garbage", E + " --syncnet {i}/syncnet_v2.model",
     r"syncnet_v2\.model: cannot read SyncNet weights: not a PyTorch weights file"),
    ("eval_syncnet_text", E + " --syncnet {i}/text.model",
     r"text\.model: cannot read SyncNet weights: not a PyTorch weights file"),
    ("eval_syncnet_empty", E + " --syncnet {i}/empty.model", r"empty\.model: cannot read SyncNet weights: .*empty"),
    ("eval_syncnet_safetensors_text", E + " --syncnet {i}/text.safetensors",
     r"text\.safetensors: cannot read SyncNet weights: not a valid safetensors file"),
    ("eval_inception_garbage", E + " --inception {i}/inception.pth", r"inception\.pth: not a readable"),
    ("eval_evaluators_missing", "eval -d {i}/prep -o out --evaluators {i}/nosuch",
     r"nosuch: evaluators directory"),
    ("eval_weights_dir_missing", E + " --weights-dir {i}/nosuch", r"nosuch: weights directory not found"),
    # bench
    ("bench_model_missing", "bench -m {i}/nosuch -o out",
     r"nosuch' is neither a directory nor a bundled model"),
    ("bench_model_bad_steps", "bench -m teacher@abc -o out", r"teacher@abc.*an integer in 1\.\.1000"),
    ("bench_image_garbage", B + " -i {i}/garbage.png", r"garbage\.png: not an image"),
    ("bench_audio_nan", B + " -a {i}/nan.wav", r"nan\.wav: contains NaN or inf"),
    ("bench_audio_inf", B + " -a {i}/inf.wav", r"inf\.wav: contains NaN or inf"),
    ("bench_seconds_zero", B + " --seconds 0", r"--seconds must be a positive number"),
    ("bench_seconds_inf", B + " --seconds inf", r"--seconds must be a positive number, got inf"),
    ("bench_repeats_zero", B + " --repeats 0", r"--repeats >= 1"),
    ("bench_threads_zero", B + " --threads 0", r"--threads must be in 1\.\.256, got 0"),
    ("bench_device_misspelt", B + " --device cdua", r"--device 'cdua'"),
    ("bench_cfg_nan", B + " --cfg-ref nan", r"--cfg-ref must be a guidance scale"),
    ("bench_cfg_absurd", B + " --cfg-audio 1e9", r"--cfg-audio must be a guidance scale"),
    ("bench_eval_missing", B + " --eval teacher={i}/nosuch.json", r"nosuch\.json not found"),
    ("bench_out_file", "bench -m teacher -o taken", r"--out taken: exists and is not a directory"),
    # export
    ("export_model_missing", "export -m {i}/nosuch -o out", r"nosuch' is neither a directory"),
    ("export_model_bad_json", "export -m {i}/model_bad_json -o out", r"model_bad_json/lipstep\.json"),
    ("export_model_text_weights", "export -m {i}/model_text_weights -o out", r"denoiser/model\.safetensors"),
    ("export_out_file", "export -m teacher -o taken", r"--out taken: exists and is not a directory"),
    ("export_out_full", "export -m teacher -o out", r"--out out: no space left"),
    ("export_out_readonly", "export -m teacher -o readonly/out", r"readonly is not writable"),
    # prepare (only-bad inputs: nothing left, an existing output folder kept)
    ("prepare_src_missing", "prepare {i}/nosuch -o out", r"SRC .*nosuch does not exist"),
    ("prepare_src_file", "prepare {i}/ok.wav -o out", r"ok\.wav is not a directory"),
    ("prepare_no_videos", "prepare {i}/no_videos -o out", r"no videos found in .*no_videos"),
    ("prepare_only_bad", "prepare {i}/only_bad -o out --workers 1",
     r"no clip could be prepared from .*only_bad"),
    ("prepare_only_bad_existing", "prepare {i}/only_bad -o existing --workers 1",
     r"no clip could be prepared"),
    ("prepare_only_bad_nested", "prepare {i}/only_bad -o new/deeper/out --workers 1",
     r"no clip could be prepared"),
    ("prepare_world_garbage", "prepare {i}/world_garbage -o out",
     r"world_garbage/manifest\.jsonl:1: not valid JSON"),
    ("prepare_out_file", "prepare {i}/only_bad -o taken", r"--out taken: exists and is not a directory"),
    ("prepare_detector_bogus", "prepare {i}/only_bad -o out --detector magic", r"detector"),
    ("prepare_override_typo", "prepare {i}/only_bad -o out sise=32", r"unknown config key 'sise'"),
    # synth
    ("synth_out_file", "synth -o taken", r"--out taken: exists and is not a directory"),
    ("synth_out_full", "synth -o out", r"--out out: no space left"),
    ("synth_size_small", "synth -o out --size 20", r"world\.size must be between 32 and 256"),
    ("synth_quality_bogus", "synth -o out --quality bogus", r"quality: must be one of"),
    ("synth_seconds_nan", "synth -o out --seconds nan", r"world\.seconds must be between"),
    ("synth_identities_zero", "synth -o out --identities 0", r"world\.identities must be at least 1"),
    ("synth_override_typo", "synth -o out sise=32", r"unknown config key 'sise'"),
    # say
    ("say_empty_text", "say '' -o out.wav", r"empty text"),
    ("say_out_suffix", "say hello -o out.txt", r"out\.txt: unsupported audio format"),
    ("say_out_is_folder", "say hello -o existing", r"--out existing: is a directory"),
    ("say_out_readonly_fs", "say hello -o out.wav", r"read-only filesystem"),
    # train
    ("train_codec_data_missing", "train codec -d {i}/nosuch -o out", r"nosuch does not exist"),
    ("train_codec_out_file", "train codec -d {i}/prep -o taken",
     r"--out taken: exists and is not a directory"),
    ("train_codec_override_typo", "train codec -d {i}/prep -o out stepz=1", r"unknown config key 'stepz'"),
    ("train_teacher_codec_damaged", "train teacher -d {i}/world_prep -c {i}/codec_damaged -o out",
     r"codec_damaged/model\.safetensors: cannot read the codec weights"),
    ("train_teacher_codec_text_config", "train teacher -d {i}/world_prep -c {i}/codec_text_config -o out",
     r"codec_text_config/config\.json: cannot read it as JSON"),
    ("train_teacher_codec_self", "train teacher -d {i}/world_prep -c {i}/codec_self -o out",
     r"codec_self/config\.json: its path .*codec_self leads back to this file"),
    ("train_teacher_codec_cycle", "train teacher -d {i}/world_prep -c {i}/codec_cycle_a -o out",
     r"codec_cycle_a/config\.json: its path .*codec_cycle_b leads back to this file"),
    ("train_teacher_codec_flipped", "train teacher -d {i}/world_prep -c {i}/codec_flipped -o out",
     r"codec_flipped/model\.safetensors is damaged \(sha256 mismatch\)"),
    ("train_teacher_codec_missing", "train teacher -d {i}/world_prep -c {i}/nosuch -o out",
     r"codec directory .*nosuch does not exist"),
    ("train_teacher_data_missing", "train teacher -d {i}/nosuch -c {i}/codec_damaged -o out",
     r"nosuch is not a prepared"),
    ("train_teacher_preset_bogus",
     "train teacher -d {i}/world_prep -c {i}/codec_damaged -o out --preset huge",
     r"preset: must be one of"),
    ("train_teacher_out_file", "train teacher -d {i}/world_prep -c {i}/codec_damaged -o taken",
     r"--out taken: exists and is not a directory"),
    ("train_mouth_reader_data_missing", "train mouth-reader -d {i}/nosuch -o out", r"nosuch does not exist"),
    ("train_syncnet_data_missing", "train syncnet -d {i}/nosuch -o out", r"nosuch does not exist"),
    ("train_features_data_missing", "train features -d {i}/nosuch -o out", r"nosuch does not exist"),
    ("train_identity_data_missing", "train identity -d {i}/nosuch -o out", r"nosuch does not exist"),
    ("train_mouth_reader_out_foreign", "train mouth-reader -d {i}/prep -o {i}/prep",
     r"prep exists and is not a mouth reader directory; refusing to overwrite it"),
    ("train_syncnet_out_foreign", "train syncnet -d {i}/prep -o {i}/prep",
     r"prep exists and is not a LipSyncNet directory; refusing to overwrite it"),
    ("train_features_out_foreign", "train features -d {i}/prep -o {i}/prep",
     r"prep exists and is not a feature-net directory; refusing to overwrite it"),
    ("train_identity_out_foreign", "train identity -d {i}/prep -o {i}/prep",
     r"prep exists and is not an identity-encoder directory; refusing to overwrite it"),
    ("train_evaluators_only_bogus", "train evaluators -d {i}/prep -o out --only bogus",
     r"--only: unknown evaluator"),
    ("train_eyes_data_missing", "train eyes -d {i}/nosuch -o out", r"nosuch does not exist"),
    ("train_eyes_out_foreign", "train eyes -d {i}/prep -o {i}/prep",
     r"prep exists and is not an eye net directory; refusing to overwrite it"),
    ("train_eyes_model_and_codec", "train eyes -d {i}/prep -o out -m lite -c {i}/codec_damaged",
     r"give --model or --codec, not both"),
    ("export_eyes_missing", "export -m lite -o out --eyes {i}/nosuch", r"nosuch: eye net directory not found"),
    ("export_eyes_not_eyes", "export -m lite -o out --eyes {i}/prep", r"prep is not an eye net directory"),
    ("export_blink_rate_bad", "export -m lite -o out --blink-rate -1", r"--blink-rate must be in 0\.\.5"),
    ("export_blink_rate_nothing_draws", "export -m fada -o out --blink-rate 0.3",
     r"--blink-rate: fada has nothing to draw blinks with"),
    ("train_visemes_data_missing", "train visemes -d {i}/nosuch -o out", r"nosuch does not exist"),
    ("train_visemes_out_foreign", "train visemes -d {i}/prep -o {i}/prep",
     r"prep exists and is not a viseme classifier directory; refusing to overwrite it"),
    ("train_visemes_unknown_key", "train visemes -d {i}/prep -o out holdout_fractoin=0.3",
     r"did you mean 'holdout_fraction'"),
    ("train_visemes_no_voice", "train visemes -d {i}/world_prep -o out", r"clip c1 names no voice; give the synthetic"),
    # distill
    ("distill_perflow_data_missing", "distill perflow -d {i}/nosuch -o out",
     r"nosuch is not a prepared directory"),
    ("distill_perflow_teacher_missing", "distill perflow -d {i}/prep -o out -t {i}/nosuch",
     r"nosuch' is neither a directory"),
    ("distill_perflow_override_range", "distill perflow -d {i}/prep -o out windows=0",
     r"windows must be >= 1"),
    ("distill_perflow_cfg_range_absurd", "distill perflow -d {i}/prep -o out cfg_audio_range=[1,1e9]",
     r"cfg_audio_range\[1\] must be a guidance scale"),
    ("distill_perflow_out_file", "distill perflow -d {i}/prep -o taken",
     r"--out taken: exists and is not a directory"),
    ("distill_dmd_data_missing", "distill dmd -d {i}/nosuch -o out", r"nosuch is not a prepared directory"),
    ("distill_dmd_teacher_missing", "distill dmd -d {i}/prep -o out -t {i}/nosuch", r"nosuch' is neither a directory"),
    ("distill_dmd_override_range", "distill dmd -d {i}/prep -o out fake_updates=0", r"fake_updates must be >= 1"),
    ("distill_dmd_reg_without_pairs", "distill dmd -d {i}/prep -o out reg_weight=0.25", r"needs teacher pairs"),
    ("distill_dmd_out_file", "distill dmd -d {i}/prep -o taken", r"--out taken: exists and is not a directory"),
    ("distill_adversarial_data_missing", "distill adversarial -d {i}/nosuch -o out -s fada",
     r"nosuch is not a prepared directory"),
    ("distill_adversarial_student_missing", "distill adversarial -d {i}/prep -o out -s {i}/nosuch",
     r"nosuch' is neither a directory"),
    ("distill_adversarial_student_not_fewstep", "distill adversarial -d {i}/prep -o out -s fada",
     r"an adversarial round starts from a few-step student"),
    ("distill_adversarial_override_range", "distill adversarial -d {i}/prep -o out -s fada chain=0",
     r"chain must be >= 1"),
    ("distill_adversarial_reference_unknown", "distill adversarial -d {i}/prep -o out -s fada reference=mirror",
     r"reference: must be one of"),
    ("distill_adversarial_out_file", "distill adversarial -d {i}/prep -o taken -s fada",
     r"--out taken: exists and is not a directory"),
    ("distill_lite_data_missing", "distill lite -d {i}/nosuch -o out", r"nosuch is not a prepared directory"),
    ("distill_lite_source_missing", "distill lite -d {i}/prep -o out -s {i}/nosuch", r"nosuch' is neither a directory"),
    ("distill_lite_source_not_fewstep", "distill lite -d {i}/prep -o out -s fada",
     r"a perflow student; the lite student distills a few-step \(fewstep\) student or a teacher"),
    ("distill_lite_override_range", "distill lite -d {i}/prep -o out width_factor=0",
     r"width_factor, depth_factor and out_head_factor must be in \(0, 1\]"),
    ("distill_lite_viseme_without_classifier", "distill lite -d {i}/prep -o out audio=viseme",
     r"audio=viseme needs viseme_classifier=DIR"),
    ("distill_lite_too_many_flops", "distill lite -d {i}/prep -o out init=scratch depth_factor=1",
     r"the lite student needs 0\.\d+ of the source's FLOPs per evaluation \(max_flops_ratio 0\.25\)"),
    ("distill_lite_out_file", "distill lite -d {i}/prep -o taken", r"--out taken: exists and is not a directory"),
    # serve (refused before a socket is opened)
    ("serve_port_range", "serve --port 70000", r"port must be in 1..65535"),
    ("serve_limit_range", "serve max_sessions=0", r"max_sessions must be >= 1"),
    ("serve_unknown_key", "serve max_session=4", r"did you mean"),
    ("serve_model_missing", "serve -m {i}/nosuch", r"nosuch' is neither a directory"),
    # demo
    ("demo_bench_seconds_negative", "demo -o out --bench-seconds -1", r"--bench-seconds must be a finite number >= 0, got -1"),
    ("demo_out_file", "demo -o taken", r"--out taken: exists and is not a directory"),
    # file-system errors at the user's paths (not raised by lipstep itself): one line naming the path
    ("say_out_name_too_long", f"say hello -o {'a' * 300}.wav", r"a{300}\.wav: File name too long"),
    ("synth_out_name_too_long", f"synth -o {'a' * 300}", r"a{300}: File name too long"),
    ("generate_image_name_too_long", gen(image="a" * 300 + ".png"), r"a{300}\.png: File name too long"),
    ("eval_data_name_too_long", f"eval -d {'a' * 300} -o out", r"a{300}: File name too long"),
    ("export_model_name_too_long", f"export -m {{i}}/{'a' * 300} -o out", r"a{300}: File name too long"),
    # ONNX runtimes, hybrid mode (issue 23)
    ("generate_runtime_without_export", G + " -m teacher --runtime onnx",
     r"teacher has no ONNX export .*run lipstep export .* --onnx"),
    ("generate_runtime_bogus", G + " --runtime tensorrt", r"--runtime must be one of torch, onnx, onnx-int8"),
    ("generate_threads_zero", G + " --threads 0", r"--threads must be in 1\.\.256, got 0"),
    ("generate_emit_bogus", G + " --emit pixels", r"--emit must be frames or latents"),
    ("generate_blink_rate_bad", G + " --blink-rate 9", r"the blink rate must be in 0\.\.5 blinks per second"),
    ("generate_blink_rate_nothing_draws", G + " -m fada --blink-rate 0.5", r"this model has nothing to draw blinks"),
    ("generate_emit_latents_suffix", G + " --emit latents", r"--emit latents writes a \.safetensors file"),
    ("decode_latents_missing", "decode {i}/nosuch.safetensors out.mp4", r"nosuch\.safetensors: file not found"),
    ("decode_latents_corrupt", "decode {i}/text.safetensors out.mp4",
     r"text\.safetensors: not a readable latents file"),
    ("decode_latents_not_lipstep", "decode {i}/plain.safetensors out.mp4",
     r"plain\.safetensors: not a lipstep latents file"),
    ("decode_other_codec", "decode {i}/other_codec.safetensors out.mp4",
     r"other_codec\.safetensors was made with codec 000000000000, but .*codec is"),
    ("decode_model_gone", "decode {i}/gone_model.safetensors out.mp4", r"gone_model, which is not here; give the model"),
    ("decode_out_suffix", "decode {i}/other_codec.safetensors out.txt", r"out\.txt: use a \.mp4"),
    ("decode_out_is_folder", "decode {i}/other_codec.safetensors existing", r"OUT existing: is a directory"),
    ("export_int8_without_onnx", "export teacher out --int8", r"--int8 needs --onnx"),
    ("export_model_twice", "export teacher out -m teacher", r"give MODEL or --model, not both"),
    ("bench_runtime_without_export", B + " --runtime torch onnx", r"no model has an onnx export; run lipstep export .*teacher OUT --onnx"),
    ("bench_runtime_bogus", B + " --runtime tflite", r"--runtime must be one of"),
    ("bench_emit_bogus", B + " --emit pixels", r"--emit must be frames or latents"),
    ("bench_threads_twice", B + " --threads 1 1", r"names a thread count twice"),
    ("bench_device_gflops_bad", B + " --device-gflops rpi5", r"--device-gflops rpi5: expected NAME=GFLOPS"),
    ("eval_runtime_bogus", "eval -d {i}/prep -o out --runtime tflite", r"runtime must be one of torch, onnx"),
    ("soak_no_data", "soak -d {i}/nosuch -o out", r"nosuch"),
    ("soak_pace_negative", "soak -d {i}/prep -o out --pace -1", r"pace must be a finite number >= 0"),
    ("soak_seconds_zero", "soak -d {i}/prep -o out --seconds 0", r"seconds, speech, piece and block must be > 0"),
    ("soak_preview_negative", "soak -d {i}/prep -o out --preview-every -2", r"preview_every must be >= 0"),
    ("soak_runtime_bogus", "soak -d {i}/prep -o out --runtime tflite", r"runtime must be one of torch, onnx"),
    # seeds: torch and numpy generators take 0..2**63-1 (options and config keys alike)
    ("generate_seed_negative", G + " --seed -1", r"--seed.*greater than or equal to 0"),
    ("synth_seed_too_big", "synth -o out --seed 18446744073709551616", r"--seed.*less than or equal to 9223372036854775807"),
    ("eval_seed_negative", "eval -d {i}/prep -o out --seed -5", r"--seed.*greater than or equal to 0"),
    ("prepare_seed_override_negative", "prepare {i}/only_bad -o out seed=-1", r"seed must be in 0\.\.2\*\*63-1, got -1"),
    ("train_codec_seed_override_huge", "train codec -d {i}/prep -o out seed=9223372036854775808",
     r"seed must be in 0\.\.2\*\*63-1"),
    # a model that is not there, for the verbs that take one besides generate/eval/bench
    ("demo_model_missing", "demo -o out -m {i}/nosuch", r"nosuch' is neither a directory nor a bundled model"),
    ("soak_model_missing", "soak -d {i}/prep -o out -m {i}/nosuch", r"nosuch' is neither a directory nor a bundled model"),
    ("decode_model_missing", "decode {i}/other_codec.safetensors out.mp4 -m {i}/nosuch",
     r"nosuch' is neither a directory nor a bundled model"),
    ("serve_device_bogus", "serve --device tpu", r"--device 'tpu': not a torch device"),
    ("distill_dmd_resume_no_data", "distill dmd -d {i}/nosuch -o out --resume", r"nosuch is not a prepared directory"),
    ("distill_lite_resume_no_data", "distill lite -d {i}/nosuch -o out --resume", r"nosuch is not a prepared directory"),
    # found by an independent probe (2026-12-07): each is refused before any work now
    ("generate_threads_huge", G + " --threads 100000", r"--threads must be in 1\.\.256, got 100000"),
    ("generate_steps_huge", G + " --steps 99999999999999999999", r"--steps must be in 1\.\.1000"),
    ("generate_detector_unknown", G + " --detector foo", r"unknown face detector 'foo'"),
    ("generate_audio_1hz", gen(audio="1hz.wav"), r"1hz\.wav: sample rate 1 Hz: not speech audio"),
    ("generate_model_info_empty", G + " -m {i}/model_info_empty", r"lipstep\.json names no kind, schedule, sampler"),
    ("generate_model_fps_nan", G + " -m {i}/model_fps_nan", r"fps must be in 1\.\.240, got nan"),
    ("generate_model_motion_frames", G + " -m {i}/model_motion_frames",
     r"chunks of 8 frames with 20 motion frames, but the denoiser takes at most 8 and 2"),
    ("bench_metric_without_eval", B + " --metric mouth_err", r"--metric needs --eval"),
    ("bench_steps_huge", "bench -m teacher@5000 -o out", r"steps after '@' must be an integer in 1\.\.1000"),
    ("export_steps_huge", "export teacher out --steps 100000", r"--steps must be in 1\.\.1000"),
    ("demo_model_bad_json", "demo -o out -m {i}/model_bad_json", r"model_bad_json/lipstep\.json"),
    ("demo_bench_seconds_inf", "demo -o out --bench-seconds inf", r"--bench-seconds must be a finite number >= 0"),
    ("serve_port_twice", "serve --port 8799 port=5", r"port=5: set port with --port, not as a key=value setting"),
    ("distill_lite_damaged_shard", "distill lite -d {i}/prep_bad_shard -o out",
     r"cannot read shard .*prep_bad_shard/shards/c1\.npz \(File is not a zip file\)"),
    ("prepare_world_row_null", "prepare {i}/world_row_null -o out", r"manifest\.jsonl:1: a row must be a JSON object"),
    # a run folder whose config.json is JSON but not an object of keys
    ("train_teacher_resume_config_not_object", "train teacher -d {i}/nosuch -c pixel -o {i}/run_list_config --resume",
     r"run_list_config/config.json: a config must be a JSON object of keys, not list"),
]

# --out under an existing file, for every verb (a file output: its folder is the file)
CASES += [(f"{verb}_out_under_file", command.format(i="{i}", out="taken/run"),
           r"--out taken/run\S*: .*taken is not a directory") for verb, command in (
    ("synth", "synth -o {out}"),
    ("say", "say hello -o {out}.wav"),
    ("prepare", "prepare {i}/only_bad -o {out}"),
    ("demo", "demo -o {out}"),
    ("export", "export -m teacher -o {out}"),
    ("eval", "eval -d {i}/prep --evaluators {i}/noev -o {out}"),
    ("soak", "soak -d {i}/prep -o {out}"),
    ("bench", "bench -m teacher -o {out}"),
    ("train_codec", "train codec -d {i}/prep -o {out}"),
    ("train_teacher", "train teacher -d {i}/world_prep -c {i}/codec_damaged -o {out}"),
    ("train_teacher_resume", "train teacher -d {i}/world_prep -c {i}/codec_damaged -o {out} --resume"),
    ("train_mouth_reader", "train mouth-reader -d {i}/prep -o {out}"),
    ("train_syncnet", "train syncnet -d {i}/prep -o {out}"),
    ("train_features", "train features -d {i}/prep -o {out}"),
    ("train_identity", "train identity -d {i}/prep -o {out}"),
    ("train_evaluators", "train evaluators -d {i}/prep -o {out}"),
    ("train_visemes", "train visemes -d {i}/prep -o {out}"),
    ("distill_perflow", "distill perflow -d {i}/prep -o {out}"),
    ("distill_perflow_resume", "distill perflow -d {i}/prep -o {out} --resume"),
)]

# cases that need the filesystem to look full or read-only: os.statvfs is faked for the case's folder
FAKE_FS = {"generate_out_full": 0, "eval_out_full": 0, "export_out_full": 0, "synth_out_full": 0,
           "generate_out_readonly_fs": os.ST_RDONLY, "say_out_readonly_fs": os.ST_RDONLY}
NEEDS_PERMISSIONS = {"generate_out_readonly", "export_out_readonly"}   # root writes to a 0555 folder anyway


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _fake_statvfs(monkeypatch, root: Path, flag: int) -> None:
    real = os.statvfs

    class Fake:   # a read-only filesystem (flag) with room, or a writable one without
        f_flag, f_bavail, f_frsize = flag, 10**6 if flag else 0, 4096

    monkeypatch.setattr(os, "statvfs", lambda p: Fake() if str(p).startswith(str(root)) else real(p))


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return info.value.code, out, err


@pytest.mark.parametrize("case, command, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_in_one_line(case, command, expected, inputs, tmp_path, monkeypatch, capsys):
    import shlex

    if case in NEEDS_PERMISSIONS and os.geteuid() == 0:
        pytest.skip("root writes to read-only folders")
    if case == "generate_device_cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("a file that is in the way\n")
    (tmp_path / "existing").mkdir()
    (tmp_path / "readonly").mkdir(mode=0o555)
    if case in FAKE_FS:
        _fake_statvfs(monkeypatch, tmp_path, FAKE_FS[case])
    before, inputs_before = _files(tmp_path), _files(inputs)

    code, out, err = run_main([a.format(i=inputs) for a in shlex.split(command)], capsys)

    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(expected, lines[0]), lines[0]
    assert "Traceback" not in out + err
    assert _files(tmp_path) == before and _files(inputs) == inputs_before  # nothing left behind or escaped


def test_the_matrix_covers_every_verb():
    from lipstep.cli import app, distill_app, train_app

    verbs = {c.name or c.callback.__name__ for c in app.registered_commands} - {"models"}
    verbs |= {f"train_{c.name}".replace("-", "_") for c in train_app.registered_commands}
    verbs |= {f"distill_{c.name}" for c in distill_app.registered_commands}
    covered = {case for case, _, _ in CASES}
    assert len(CASES) >= 60
    for verb in verbs:
        assert any(c.startswith(f"{verb}_") for c in covered), verb


def test_serve_on_a_taken_port_is_one_line_before_the_model_loads(tmp_path, monkeypatch, capsys):
    """The port is bound before anything heavy runs: a taken port (or an unknown host) is one line, exit 2."""
    import socket

    from lipstep import server

    monkeypatch.setattr(server, "create_app", lambda cfg: pytest.fail("the model loaded before the port was bound"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = run_main(["serve", "--host", "127.0.0.1", "--port", str(port)], capsys)
    assert code == 2 and "Traceback" not in out + err
    assert err.splitlines() == [(f"error: cannot listen on 127.0.0.1:{port} (Address already in use); another "
                                 "server may be using it")]
    code, out, err = run_main(["serve", "--host", "no-such-host.invalid", "--port", "8123"], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: --host no-such-host.invalid: cannot resolve it (")


def test_a_bug_is_one_line_exit_1_and_removes_the_folder_it_made(tmp_path, monkeypatch, capsys):
    """An exception that is not about the input (a bug) still ends in one line, exit status 1, nothing left."""
    from lipstep.data import world

    def bug(cfg, out, **kwargs):
        Path(out).mkdir(parents=True)
        (Path(out) / "half.txt").write_text("half made")
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(world, "synthesize_world", bug)
    code, out, err = run_main(["synth", "-o", str(tmp_path / "world")], capsys)
    assert code == 1 and "Traceback" not in out + err
    assert err.splitlines() == [("error: internal error (ZeroDivisionError: division by zero); this is a lipstep bug: "
                                 "please report it with the output of the same command run with LIPSTEP_DEBUG=1")]
    assert not (tmp_path / "world").exists()


# ------------------------------------------------------------------------------------- security


def test_i3d_is_never_loaded_from_a_weights_folder(inputs, tmp_path, monkeypatch):
    """TorchScript runs code from its file: an i3d_torchscript.pt found in --weights-dir is not loaded."""
    import torch

    from lipstep.eval.runner import load_evaluators

    (tmp_path / "i3d_torchscript.pt").write_bytes(b"crafted")
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load was called"))

    ev = load_evaluators(inputs / "noev", weights_dir=tmp_path)

    assert ev.video is None and "i3d" not in ev.sources
    assert "--i3d" in ev.skipped["fvd_i3d"] and "i3d_torchscript.pt" in ev.skipped["fvd_i3d"]


def test_i3d_help_says_loading_runs_code(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    help_text = re.sub(r"[\s│]+", " ", capsys.readouterr().out)  # rich draws the help in a box
    assert "runs code" in help_text and "never from --weights-dir" in help_text


def test_manifest_ids_that_are_plain_names_are_kept(tmp_path):
    """Odd but valid ids (spaces, non-ASCII, dots inside) still read; only path-like ones are refused."""
    from lipstep.data.dataset import read_manifest

    ids = ["clip 1", "Łukasz_01", "a.b.c", "x..y", "-dash"]
    _prepared(tmp_path / "p", "\n".join(_row(i) for i in ids))
    assert [r["id"] for r in read_manifest(tmp_path / "p")] == ids


def test_long_run_videos_get_plain_names():
    from lipstep.data.latents import safe_name

    assert safe_name("../../etc/x") == "etc_x" and safe_name("/abs") == "abs"
    assert safe_name("..", "identity") == "identity"


# ----------------------------------------------------------------------------- odd but valid


def test_checks_accept_odd_but_valid_outputs_and_devices(tmp_path):
    from lipstep.checks import check_device, check_output
    from lipstep.diffusion.guidance import check_scale

    (tmp_path / "model").mkdir()
    assert check_output(tmp_path / "new" / "deeper" / "out") == tmp_path / "new" / "deeper" / "out"
    check_output(tmp_path / "model")                                 # an existing folder (resume, overwrite)
    check_output(tmp_path / "ünïcode dir" / "out.mp4", file=True)   # a file in a folder still to be made
    assert str(check_device("cpu")) == "cpu" and str(check_device("cpu:0")) == "cpu:0"
    for scale in (0.0, 1.0, 7.5, 100.0):
        check_scale(scale, "--cfg-audio")
    assert not (tmp_path / "new").exists()   # checking makes nothing


def test_a_warning_prints_as_one_line_naming_the_file(capsys):
    """Python warnings print as one `warning:` line (not the file, line number and source line of the call),
    and the no-face warning names the portrait's file."""
    from lipstep.data.faces import crop_portrait

    run_main(["--version"], capsys)  # installs the CLI's warning format
    noise = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    crop_portrait(noise, 32, "haar", source="portrait.png")
    warning = "warning: no face found in portrait.png; using the centre square crop"
    assert capsys.readouterr().err.splitlines() == [warning]


def test_a_full_disk_mid_run_is_one_line(tmp_path, monkeypatch, capsys):
    """A disk that fills up after the checks passed: one line naming the file, not a traceback."""
    from lipstep import cli

    def full(path, obj):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(cli, "write_json_atomic", full)
    code, _, err = run_main(["say", "hello", "-o", str(tmp_path / "hello.wav")], capsys)
    assert code == 2
    assert err.splitlines() == [f"error: {tmp_path / 'hello.phonemes.json'}: No space left on device"]


@pytest.mark.parametrize("err, one_line", [
    (OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), "x.phonemes.json"), True),
    (OSError(errno.EISDIR, os.strerror(errno.EISDIR), "x.phonemes.json"), True),
    (OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY), "a", None, "b"), True),
    (OSError(errno.ENOENT, os.strerror(errno.ENOENT)), False),       # a path error that names no path
    (OSError(errno.EBADF, os.strerror(errno.EBADF), "x.phonemes.json"), False),
    (OSError(errno.EINVAL, os.strerror(errno.EINVAL)), False),
], ids=["name_too_long", "is_a_directory", "two_paths", "enoent_no_path", "ebadf", "einval"])
def test_file_system_errors_at_paths_are_one_line_and_bugs_are_reported_as_bugs(err, one_line, tmp_path,
                                                                                monkeypatch, capsys):
    """An OSError naming a path the user's input leads to (missing, too long, a folder) is bad input (exit
    2); one that names no path, or that a path cannot cause (a bad file descriptor), is a bug: one
    ``internal error`` line and exit 1, its traceback under LIPSTEP_DEBUG=1."""
    from lipstep import cli

    def fail(path, obj):
        raise err

    monkeypatch.setattr(cli, "write_json_atomic", fail)
    argv = ["say", "hello", "-o", str(tmp_path / "x.wav")]
    if not one_line:
        code, out, err_text = run_main(argv, capsys)
        assert code == 1 and "Traceback" not in out + err_text
        assert err_text.splitlines() == [(f"error: internal error ({type(err).__name__}: {err}); this is a lipstep bug: "
                                           "please report it with the output of the same command run with LIPSTEP_DEBUG=1")]
        assert not (tmp_path / "x.wav").exists()
        monkeypatch.setenv("LIPSTEP_DEBUG", "1")
        with pytest.raises(OSError) as info:
            main(argv)
        assert info.value is err
        return
    code, _, err_text = run_main(argv, capsys)
    assert not (tmp_path / "x.wav").exists()   # the audio is not left without its phoneme list
    paths = " -> ".join(f for f in (err.filename, err.filename2) if f)
    assert code == 2 and err_text.splitlines() == [f"error: {paths}: {err.strerror}"]
