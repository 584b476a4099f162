"""Loss curves of TurboTalk runs as one PNG: python curves.py OUT.png LABEL=RUN_DIR ... (reads RUN_DIR/logs)."""
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

WANTED = ["generator/l_dm", "generator/dm_grad", "fake_score/l_fake", "generator/l_gan_g", "fake_score/l_gan_d",
          "discriminator/loss", "discriminator/d_real", "discriminator/d_fake", "student/l_adv"]


def smooth(v, k=9):
    return np.convolve(v, np.ones(k) / k, mode="valid") if len(v) > k else np.asarray(v)


runs = [a.split("=", 1) for a in sys.argv[2:]]
fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.6), squeeze=False)
for ax, (label, run) in zip(axes[0], runs):
    ea = EventAccumulator(f"{run}/logs")
    ea.Reload()
    for tag in WANTED:
        if tag in ea.Tags()["scalars"]:
            ev = ea.Scalars(tag)
            steps, vals = [e.step for e in ev], [e.value for e in ev]
            s = smooth(vals)
            ax.plot(steps[len(steps) - len(s):], s, label=tag)
    ax.set_title(label)
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(sys.argv[1], dpi=90)
