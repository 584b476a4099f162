import sys, copy, torch, numpy as np, time
from pathlib import Path
from lipstep.pipeline import AvatarPipeline
from lipstep.data.dataset import WindowDataset, WindowConfig
import lipstep.train.teacher as T
torch.set_num_threads(2); torch.manual_seed(0)
mode = sys.argv[1]; steps = int(sys.argv[2])
prep = Path("/work/runs/t8/prepared")
pipe = AvatarPipeline.from_pretrained("/work/runs/t8/teacher/model")
net, sched = pipe.denoiser, pipe.schedule
net.float().train()
for n_,p in net.named_parameters(): p.requires_grad_(not n_.startswith('mouth_head'))
ds = WindowDataset(prep, "train", WindowConfig(), latents=prep/"latents/pixel-c12-f2-00adb27a3664", pixels=False, residual=4.0)
if mode == "edm":
    orig = T.snr_weight
    T.snr_weight = lambda s, t, g: orig(s, t, g) + 1/0.118
cfg = T.TeacherLossConfig()
method = T.TeacherMethod(net, sched, cfg, residual=True)
opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=2e-4, weight_decay=0.01, betas=(0.9,0.99))
ema = copy.deepcopy(net).eval()
g = torch.Generator().manual_seed(5); rng = np.random.default_rng(5)
t0=time.time()
for step in range(steps):
    idx = rng.choice(len(ds), 8, replace=False)
    b = torch.utils.data.default_collate([ds[int(i)] for i in idx])
    loss, logs = method.loss("denoiser", b, step, g)
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0); opt.step()
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), net.parameters()): pe.lerp_(p, 0.02)
    if step % 50 == 0: print(step, round(loss.item(),4), logs, round(time.time()-t0), flush=True)
pipe.denoiser = ema
pipe.save_pretrained(f"/tmp/diag/ft_{mode}")
