"""On a CUDA machine (skipped elsewhere; CI has none): the loop trains in bf16 and a model samples on the GPU
what it samples on the CPU (the noise is drawn on the CPU, so only arithmetic differs)."""

import pytest
import torch
from tests.contracts.test_methods import LatentWindows, _cfg, teacher_method
from tests.tinypipe import tiny_pipeline

from lipstep.pipeline import AvatarPipeline
from lipstep.train.loop import latest_checkpoint, pick_precision, train

pytestmark = pytest.mark.gpu


def test_the_loop_trains_a_tiny_teacher_in_bf16_on_cuda(tmp_path):
    assert pick_precision("auto")[0] == ("bf16" if torch.cuda.is_bf16_supported() else "no")
    method = teacher_method()
    before = {k: v.detach().clone() for k, v in method.roles()["denoiser"].module.state_dict().items()}
    state = train(method, LatentWindows(), _cfg(4), tmp_path, progress=False)
    module = getattr(state.modules["denoiser"], "module", state.modules["denoiser"])
    assert next(module.parameters()).is_cuda
    after = module.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k].cpu()) for k in before)
    assert latest_checkpoint(tmp_path) is not None


def test_a_model_samples_on_cuda_what_it_samples_on_the_cpu(tmp_path):
    path = tiny_pipeline().save_pretrained(tmp_path / "model")
    cpu = AvatarPipeline.from_pretrained(path)
    gpu = AvatarPipeline.from_pretrained(path, device="cuda")
    assert gpu.device.type == "cuda"
    ref, audio = torch.randn(1, 12, 8, 8), torch.randn(8, 16, 80)
    a, nfe_a = cpu.generate_latents(ref, audio, seed=5)
    b, nfe_b = gpu.generate_latents(ref.to(gpu.device), audio.to(gpu.device), seed=5)
    assert nfe_a == nfe_b
    assert torch.allclose(a.float(), b.float().cpu(), atol=1e-3), (a.float() - b.float().cpu()).abs().max()
