"""Activation checkpointing (``TrainConfig.activation_checkpointing``,
``SSAModel.set_activation_checkpointing``): the same outputs and gradients for less memory kept for the
backward pass, and finetune() really uses it."""

from __future__ import annotations

import pytest
import torch

import ssa.modeling.frame_decoder
import ssa.modeling.model
import ssa.modeling.pixel_decoder
from ssa import SSAConfig, SSAModel
from ssa.train import TrainConfig, finetune


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: one thread avoids the cost of waking others on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model() -> SSAModel:
    torch.manual_seed(0)
    model = SSAModel(SSAConfig.from_preset("ssa-tiny")).train()
    model.backbone.unfreeze(text=False)  # gradients through the trunk's own weights too
    return model


def _step(model: SSAModel, frames: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """Loss, gradients and the bytes of the tensors kept for backward, of one forward/backward."""
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # dropout masks
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(frames, ["the red square", "a blue circle"], with_frames=True)
        loss = out.mask_logits.float().sigmoid().mean() + out.class_logits.float().sum()
        loss = loss + sum(m.float().mean() for m in out.frames.aux_mask_logits)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, saved


@pytest.mark.parametrize("trunk, decoders, kept", [(True, False, 0.8), (False, True, 0.9), (True, True, 0.7)])
def test_same_gradients_less_memory(trunk, decoders, kept):
    frames = torch.randn(1, 2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    model = _model()
    loss, grads, saved = _step(model, frames)
    model.set_activation_checkpointing(trunk=trunk, decoders=decoders)
    loss_ckpt, grads_ckpt, saved_ckpt = _step(model, frames)
    assert torch.equal(loss_ckpt, loss)
    assert grads.keys() == grads_ckpt.keys() and len(grads) > 50
    assert any(n.startswith("backbone.clip.visual") for n in grads)
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], atol=1e-7, rtol=1e-6, msg=name)
    assert saved_ckpt < kept * saved  # the recomputed segments keep only their inputs
    # inference without gradients is unaffected, and switching off restores the plain path
    model.set_activation_checkpointing(False, False)
    _, _, saved_off = _step(model, frames)
    assert saved_off == saved


def test_finetune_uses_it(tmp_path, monkeypatch):
    from ssa.data.synthetic import write_split

    data = write_split(tmp_path / "split", num_videos=1, seed=3, num_frames=6, height=64, width=64,
                       progress=False)
    calls = {"model": 0, "pixel_decoder": 0, "frame_decoder": 0}

    def spy(module):
        original = module.checkpoint

        def counting(*args, **kwargs):
            calls[module.__name__.rsplit(".", 1)[1]] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, "checkpoint", counting)

    for module in (ssa.modeling.model, ssa.modeling.pixel_decoder, ssa.modeling.frame_decoder):
        spy(module)
    fast = {"num_frames": 2, "scales": [64], "log_every": 1, "warmup_iters": 1, "loss": {"num_points": 64}}
    model = finetune("ssa-tiny", data, output_dir=tmp_path / "trunk", iterations=1, batch_size=1,
                     progress=False, activation_checkpointing="trunk", **fast)
    assert calls["model"] >= 4 and calls["pixel_decoder"] == calls["frame_decoder"] == 0
    assert not model.checkpoint_trunk  # switched off on the returned model
    finetune("ssa-tiny", data, output_dir=tmp_path / "all", iterations=1, batch_size=1, progress=False,
             activation_checkpointing=True, **fast)
    assert calls["pixel_decoder"] > 0 and calls["frame_decoder"] > 0
    before = dict(calls)
    finetune("ssa-tiny", data, output_dir=tmp_path / "off", iterations=1, batch_size=1, progress=False,
             **fast)
    assert calls == before  # off by default


def test_option_is_validated():
    with pytest.raises(ValueError, match="activation_checkpointing"):
        TrainConfig(activation_checkpointing="everything")
    with pytest.raises(ValueError, match="activation_checkpointing"):
        TrainConfig(activation_checkpointing=1)
    assert TrainConfig().activation_checkpointing is False


@pytest.mark.parametrize("flag, expected", [("all", True), ("trunk", "trunk"), ("decoders", "decoders"),
                                            ("off", False), (None, "absent")])
def test_ssa_train_passes_activation_checkpointing(tmp_path, monkeypatch, flag, expected):
    import ssa.train
    from ssa.cli import main

    seen = {}
    monkeypatch.setattr(ssa.train, "finetune", lambda *a, **kw: seen.update(kw))
    data = tmp_path / "data"
    data.mkdir()
    args = ["train", "--model", "ssa-tiny", "--data", str(data), "--out", str(tmp_path / "run")]
    assert main(args + ([] if flag is None else ["--activation-checkpointing", flag])) == 0
    assert seen.get("activation_checkpointing", "absent") == expected
