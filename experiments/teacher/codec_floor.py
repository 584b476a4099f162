"""How much lip-sync signal a codec keeps: the bundled mouth reader on real frames and on their codec
reconstructions (the floor no generator through that codec can beat), plus PSNR, per split.

    python experiments/teacher/codec_floor.py PREPARED CODEC [CODEC ...] [--split test] [--frames 2000]

Prints one JSON line per codec: MouthErr (mean abs. openness error) and correlation on the real frames
and on the reconstructions, and the reconstruction PSNR of the same frames.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from lipstep.codecs.vae import load_codec
from lipstep.data.dataset import read_manifest
from lipstep.eval.mouthreader import MouthReader, mouth_scores, reconstruct
from lipstep.eval.train_mouthreader import split_frames

EVALUATORS = Path(__file__).resolve().parents[2] / "src" / "lipstep" / "weights" / "evaluators" / "mouth"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prepared")
    ap.add_argument("codecs", nargs="+")
    ap.add_argument("--split", default="test")
    ap.add_argument("--frames", type=int, default=2000, help="evenly spaced frames of the split")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    reader = MouthReader(EVALUATORS)
    frames, labels = split_frames(Path(args.prepared), read_manifest(Path(args.prepared)), args.split, args.frames)
    mae, corr = mouth_scores(reader.openness(frames), labels[:, 0])
    for path in args.codecs:
        codec = load_codec(path)
        recon = reconstruct(codec, frames)
        mae_c, corr_c = mouth_scores(reader.openness(recon), labels[:, 0])
        mse = ((recon.astype(np.float64) - frames) / 255.0) ** 2
        psnr = float(np.mean(10 * np.log10(1.0 / np.maximum(mse.reshape(len(frames), -1).mean(1), 1e-10))))
        print(json.dumps({"codec": str(path), "split": args.split, "frames": len(frames),
                          "mouth_err_real": round(mae, 4), "corr_real": round(corr, 4),
                          "mouth_err_codec": round(mae_c, 4), "corr_codec": round(corr_c, 4),
                          "psnr_codec": round(psnr, 2)}))


if __name__ == "__main__":
    main()
