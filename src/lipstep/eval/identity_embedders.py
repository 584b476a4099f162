"""Identity embedders for the identity metric (`lipstep.eval.identity`), one interface: `IdentityEmbedder`.

- `OwnIdentity(dir)`: lipstep's own `IdentityNet` (`lipstep.nets.identity`), trained by
  `lipstep.eval.train_identity` on the train-split identities of a prepared directory
  (``lipstep-identity-v1``; internal: compare runs with it, never with published CSIM).
- `ArcFaceONNX(path)`: an insightface recognition model (e.g. ``w600k_r50.onnx``) on onnxruntime,
  from a local file only (Tier 1, metrics.md §5.1).
- `DlibDescriptor()`: dlib's 128-d face descriptor (``dlib_face_recognition_resnet_model_v1.dat``).

`resolve_identity_embedders` builds the ones that are available and says why the others were skipped.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lipstep.errors import LipstepError, MissingDependency
from lipstep.eval.features import file_sha256
from lipstep.eval.identity import IdentityEmbedder, centre_square, check_frames, to_uint8, unit_rows
from lipstep.nets.identity import OWN_NAME, WEIGHTS_NAME, IdentityNet, identity_input, load_identity

log = logging.getLogger(__name__)

ARCFACE_FILE = "w600k_r50.onnx"     # insightface buffalo_l recognition model
DLIB_NAME = "dlib-resnet-v1"


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, S, S, 3] -> [N, size, size, 3]: OpenCV area filter when shrinking, bilinear when enlarging."""
    import cv2

    if x.shape[1] == size:
        return x
    interp = cv2.INTER_AREA if x.shape[1] > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(np.ascontiguousarray(f), (size, size), interpolation=interp) for f in x])



class OwnIdentity:
    """lipstep's own identity embeddings (`IdentityNet`), from a `train_identity` directory.

    Crops are centre-squared and resized to the net's ``image_size`` (bilinear, antialiased).
    An internal embedding space: compare lipstep runs with it, not with published CSIM.
    """

    def __init__(self, path: str | os.PathLike, *, batch_size: int = 128,
                 device: str | torch.device | None = None):
        self.path = Path(path)
        self._setup(load_identity(self.path), batch_size, device)
        self.sha256 = file_sha256(self.path / WEIGHTS_NAME)

    @classmethod
    def from_model(cls, model: IdentityNet, *, batch_size: int = 128) -> OwnIdentity:
        """Wrap an in-memory net (e.g. during training); put in eval mode, ``sha256`` empty."""
        self = cls.__new__(cls)
        self.path, self.sha256 = None, ""
        self._setup(model, batch_size, None)
        return self

    def _setup(self, model: IdentityNet, batch_size: int, device) -> None:
        self.model = model.eval()
        if device is not None:
            self.model.to(device)
        self.name, self.batch_size = model.cfg.name, batch_size

    @torch.inference_mode()
    def __call__(self, frames) -> np.ndarray:
        t = check_frames(frames, type(self).__name__)
        device = next(self.model.parameters()).device
        t = centre_square(t)
        out = [self.model(identity_input(c, self.model.cfg.image_size).to(device)).float().cpu()
               for c in t.split(self.batch_size)]
        return F.normalize(torch.cat(out), dim=-1).numpy()


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependency("ArcFaceONNX needs onnxruntime: pip install 'lipstep[arcface]'") from None
    return onnxruntime


def _arcface_normalisation(path: Path) -> tuple[float, float]:
    """(mean, std) as insightface chooses them: MXNet-converted models that start with Sub and Mul nodes
    normalise inside the graph (0, 1); all others expect (x - 127.5) / 127.5. Without the onnx package
    the graph cannot be read and the common (127.5, 127.5) is assumed."""
    try:
        import onnx
    except ImportError:
        log.info("identity: onnx not installed; assuming %s expects (x - 127.5) / 127.5", path.name)
        return 127.5, 127.5
    try:
        names = [node.name for node in onnx.load(str(path), load_external_data=False).graph.node[:8]]
    except Exception as e:  # noqa: BLE001 - protobuf raises several types for a bad file
        raise LipstepError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None
    has_sub = any(n.startswith(("Sub", "_minus")) for n in names)
    has_mul = any(n.startswith(("Mul", "_mul")) for n in names)
    return (0.0, 1.0) if has_sub and has_mul else (127.5, 127.5)


def _find_arcface(path: Path) -> Path:
    if path.is_dir():
        if (path / ARCFACE_FILE).is_file():
            return path / ARCFACE_FILE
        found = sorted(p.name for p in path.glob("*.onnx"))
        raise LipstepError(f"{path}: no {ARCFACE_FILE} in this directory (found {found or 'no .onnx files'}); "
                           "pass the recognition model file itself")
    if not path.is_file():
        raise LipstepError(f"ArcFace ONNX model {path} not found (e.g. insightface's {ARCFACE_FILE}; "
                           "lipstep never downloads it)")
    return path


class ArcFaceONNX:
    """ArcFace embeddings from an insightface recognition model (e.g. ``w600k_r50.onnx``) on onnxruntime.

    Preprocessing as insightface's ``ArcFaceONNX.get_feat``: RGB (insightface reads BGR with OpenCV
    and swaps to RGB in ``blobFromImages``), NCHW float32, ``(x - 127.5) / 127.5`` (MXNet-converted
    models whose graph starts with Sub/Mul nodes get raw 0..255, as insightface decides), at the
    model's input size (112 x 112).

    **Alignment approximation:** insightface first warps each face onto a 112 x 112 template by a
    5-point similarity transform (eyes, nose, mouth corners). lipstep's crops are already
    face-centred and no landmark detector is assumed, so instead the centred square of side
    ``crop x min(H, W)`` is taken and resized to 112 (OpenCV area filter when shrinking, bilinear
    when enlarging). The template frames the face more tightly than lipstep's crops (prepare's
    ``crop_scale`` is 1.8 face sizes), so ``crop`` around 0.6-0.7 is closer to ArcFace's framing;
    scores depend on it, so it is part of ``name`` when not 1. Expect lower absolute similarities
    than published CSIM; compare runs at the same setting only. Float frames are quantised to uint8.

    ``sha256``: the expected SHA-256 of the file (full hex digest, or a prefix of >= 8 characters).
    ``threads``: onnxruntime intra-op threads (default: torch's thread count).
    """

    def __init__(self, path: str | os.PathLike, sha256: str | None = None, *, crop: float = 1.0,
                 batch_size: int = 32, threads: int | None = None, providers: list[str] | None = None):
        ort = _import_onnxruntime()
        if not 0.1 <= crop <= 1.0:
            raise ValueError(f"ArcFaceONNX: crop must be in [0.1, 1], got {crop}")
        if sha256 is not None and len(sha256) < 8:
            raise ValueError(f"ArcFaceONNX: give at least 8 hex digits of the expected SHA-256, got {sha256!r}")
        self.path = _find_arcface(Path(path))
        self.sha256 = file_sha256(self.path)
        if sha256 is not None and not self.sha256.startswith(sha256.lower()):
            raise LipstepError(f"{self.path}: SHA-256 {self.sha256[:16]}... does not match the expected "
                               f"{sha256[:16]}... (wrong or corrupted model file)")
        self.input_mean, self.input_std = _arcface_normalisation(self.path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options,
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for a bad file
            raise LipstepError(f"{self.path}: onnxruntime cannot load it ({' '.join(str(e).split())[:160]})") from None
        self.input_name, self.size = self._input_spec()
        self.crop, self.batch_size = crop, batch_size
        self.name = f"arcface-onnx:{self.path.name}" + (f"@crop{crop:g}" if crop != 1.0 else "")

    def _input_spec(self) -> tuple[str, int]:
        inputs = self.session.get_inputs()
        shape = inputs[0].shape if len(inputs) == 1 else []
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
            raise LipstepError(f"{self.path}: expected one input [N, 3, H, W] (an ArcFace recognition model), got "
                               f"{[(i.name, i.shape) for i in inputs]}")
        h, w = inputs[0].shape[2:4]
        if isinstance(h, int) and isinstance(w, int) and h != w:
            raise LipstepError(f"{self.path}: expected a square input, got {h} x {w}")
        return inputs[0].name, h if isinstance(h, int) else 112

    def preprocess(self, frames) -> np.ndarray:
        """Checked frames -> the model input float32 [N, 3, size, size] (see the class docstring)."""
        x = _resize(centre_square(to_uint8(check_frames(frames, type(self).__name__)), self.crop), self.size)
        x = x.astype(np.float32).transpose(0, 3, 1, 2)                       # [N, 3, size, size], RGB
        return np.ascontiguousarray((x - self.input_mean) / self.input_std, dtype=np.float32)

    def __call__(self, frames) -> np.ndarray:
        x = self.preprocess(frames)
        out = []
        for first in range(0, len(x), self.batch_size):
            e = self.session.run(None, {self.input_name: x[first:first + self.batch_size]})[0]
            e = np.asarray(e).reshape(len(x[first:first + self.batch_size]), -1)
            out.append(e)
        return unit_rows(np.concatenate(out), self.name)


class DlibDescriptor:
    """dlib's 128-d face descriptor (``dlib_face_recognition_resnet_model_v1.dat``), normalised to unit length.

    Model files come from the ``face_recognition_models`` package (``pip install 'lipstep[faces]'``)
    unless given. For each crop, the 5-point shape predictor runs with the crop's centred square of
    side ``box_fraction x min(H, W)`` as the face box (the whole crop by default; no detector is
    run), then ``compute_face_descriptor`` aligns the 150 x 150 chip and embeds it.
    """

    name = DLIB_NAME

    def __init__(self, *, shape_predictor: str | os.PathLike | None = None,
                 recognition_model: str | os.PathLike | None = None, box_fraction: float = 1.0, jitters: int = 0):
        try:
            import dlib
        except ImportError:
            raise MissingDependency("DlibDescriptor needs dlib: pip install 'lipstep[faces]'") from None
        if shape_predictor is None or recognition_model is None:
            try:
                import face_recognition_models as frm
            except ImportError:
                raise MissingDependency("DlibDescriptor needs the dlib model files of face_recognition_models: "
                                        "pip install 'lipstep[faces]' (or pass both model paths)") from None
            shape_predictor = shape_predictor or frm.pose_predictor_five_point_model_location()
            recognition_model = recognition_model or frm.face_recognition_model_location()
        paths = [Path(shape_predictor), Path(recognition_model)]
        for p in paths:
            if not p.is_file():
                raise LipstepError(f"dlib model file {p} not found")
        if not 0.1 <= box_fraction <= 1.0:
            raise ValueError(f"DlibDescriptor: box_fraction must be in [0.1, 1], got {box_fraction}")
        self._dlib = dlib
        self.predictor = dlib.shape_predictor(str(paths[0]))
        self.model = dlib.face_recognition_model_v1(str(paths[1]))
        self.sha256 = file_sha256(paths[1])
        self.box_fraction, self.jitters = box_fraction, jitters

    def __call__(self, frames) -> np.ndarray:
        x = centre_square(to_uint8(check_frames(frames, type(self).__name__)))
        side = x.shape[1]
        inner = round(self.box_fraction * side)
        lo = (side - inner) // 2
        box = self._dlib.rectangle(lo, lo, lo + inner - 1, lo + inner - 1)
        out = []
        for f in x:
            f = np.ascontiguousarray(f)
            shape = self.predictor(f, box)
            out.append(np.asarray(self.model.compute_face_descriptor(f, shape, self.jitters), np.float64))
        return unit_rows(np.stack(out), self.name)


def resolve_identity_embedders(own_dir: str | os.PathLike | None = None, arcface: str | os.PathLike | None = None,
                               dlib: bool = False, *, arcface_sha256: str | None = None,
                               required: tuple[str, ...] = (),
                               ) -> tuple[list[IdentityEmbedder], list[tuple[str, str]]]:
    """The identity embedders that can run, and ``(name, reason)`` for each one skipped.

    Missing files, missing optional packages and bad weights skip an embedder (never fail the
    run, metrics.md §5.2), except for the embedders named in `required` (e.g. ``"arcface-onnx"`` for a
    file the user gave explicitly): their `LipstepError` is raised. Nothing is downloaded.
    """
    found: list[IdentityEmbedder] = []
    skipped: list[tuple[str, str]] = []
    choices = [
        (OWN_NAME, own_dir, lambda: OwnIdentity(own_dir),
         "no identity-encoder directory given (train one with train_identity)"),
        ("arcface-onnx", arcface, lambda: ArcFaceONNX(arcface, arcface_sha256),
         f"no ArcFace ONNX file given (e.g. insightface's {ARCFACE_FILE})"),
        (DLIB_NAME, dlib or None, DlibDescriptor, "not requested"),
    ]
    for name, wanted, build, reason in choices:
        if wanted is None:
            skipped.append((name, reason))
            continue
        try:
            found.append(build())
        except LipstepError as e:
            if name in required:
                raise
            log.warning("identity: skipping %s: %s", name, e)
            skipped.append((name, str(e)))
    return found, skipped


__all__ = ["ARCFACE_FILE", "DLIB_NAME", "ArcFaceONNX", "DlibDescriptor", "OwnIdentity", "resolve_identity_embedders"]
