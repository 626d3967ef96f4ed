"""Checkpoints (ssa.hub): save/load round trips, a hand-built Hub cache used offline, error paths,
trainable-only checkpoints, the model card, push_to_hub (HfApi monkeypatched) and .pth import.

Nothing here touches the network: sockets are disabled for the whole module."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import shutil
import socket
from pathlib import Path

import huggingface_hub
import pytest
import torch
from conftest import build
from huggingface_hub import ModelCard
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ssa import SSAConfig, SSAModel, hub, model_card
from ssa.hub import InvalidCheckpointError, WeightsNotFoundError
from ssa.modeling.backbone import FrozenCLIP

FAKE_TAG = "synthetic-test-tag"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


# ----------------------------------------------------------------------------------------------------
# fixtures and helpers
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a connection fails loudly."""

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in tests/test_hub.py")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def model() -> SSAModel:
    return build("ssa-tiny", seed=0)


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory) -> Path:
    """A full checkpoint of ``model`` (read-only for tests: copy it before editing)."""
    return hub.save_pretrained(model, tmp_path_factory.mktemp("ckpt") / "ssa-tiny")


@pytest.fixture(scope="module")
def reference_clip_state() -> dict[str, torch.Tensor]:
    """The 'open_clip' weights the fake CLIP loader hands out."""
    return {k: v.clone() for k, v in build("ssa-tiny", seed=123).backbone.clip.state_dict().items()}


@pytest.fixture
def fake_clip(monkeypatch, reference_clip_state) -> list[tuple[str, str | None]]:
    """Replace open_clip's pretrained download with known tensors; returns the calls made."""
    calls: list[tuple[str, str | None]] = []

    def load_pretrained(self, tag: str, cache_dir: str | None = None) -> None:
        calls.append((tag, cache_dir))
        self.clip.load_state_dict(reference_clip_state)

    monkeypatch.setattr(FrozenCLIP, "load_pretrained", load_pretrained)
    return calls


@pytest.fixture
def pretrained_model(fake_clip) -> SSAModel:
    """Tiny model whose config names a pretrained CLIP tag (weights from the fake loader)."""
    torch.manual_seed(5)
    model = SSAModel(SSAConfig.from_preset("ssa-tiny", clip_pretrained=FAKE_TAG)).eval()
    assert fake_clip == [(FAKE_TAG, None)]
    fake_clip.clear()
    return model


def run(model: SSAModel, frames: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(frames, "a cat")
    return torch.cat([out.class_logits.flatten(), out.mask_logits.flatten()])


def assert_same_state(a: SSAModel, b: SSAModel) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def build_hub_cache(cache_dir: Path, repo_id: str, folder: Path, commit: str = COMMIT) -> Path:
    """Lay ``folder``'s files out as huggingface_hub's cache does: content-addressed blobs, a snapshot
    of relative symlinks per commit, and refs/main holding the commit hash (no trailing newline)."""
    repo_dir = cache_dir / ("models--" + repo_id.replace("/", "--"))
    blobs, snapshot = repo_dir / "blobs", repo_dir / "snapshots" / commit
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in sorted(folder.iterdir()):
        data = file.read_bytes()
        blob = blobs / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        try:
            (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
        except OSError:  # no symlinks (Windows without developer mode): the cache then holds copies
            shutil.copyfile(blob, snapshot / file.name)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return repo_dir


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1 as huggingface_hub sees it: the env var (read at import) and the constant that
    ``constants.is_offline_mode()`` (or, in older versions, the download code) consults."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    if hasattr(huggingface_hub.constants, "is_offline_mode"):
        assert huggingface_hub.constants.is_offline_mode()


@pytest.fixture
def download_spy(monkeypatch) -> list[dict]:
    """Records the real hf_hub_download's calls (and results) without changing it."""
    real = huggingface_hub.hf_hub_download
    calls: list[dict] = []

    def spy(repo_id, filename, **kwargs):
        call = {"repo_id": repo_id, "filename": filename, **kwargs}
        calls.append(call)
        call["result"] = real(repo_id, filename, **kwargs)
        return call["result"]

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", spy)
    return calls


# ----------------------------------------------------------------------------------------------------
# round trips
# ----------------------------------------------------------------------------------------------------
def test_round_trip_local_directory(model, checkpoint, frames):
    assert sorted(p.name for p in checkpoint.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert json.loads((checkpoint / "config.json").read_text()) == model.config.to_dict()
    with safe_open(str(checkpoint / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["format"] == "pt" and meta["ssa_weights"] == "full"
    assert meta["ssa_version"] == __import__("ssa").__version__
    assert any(k.startswith("backbone.") for k in keys)

    loaded = SSAModel.from_pretrained(checkpoint)
    assert not loaded.training
    assert loaded.config == model.config
    assert_same_state(model, loaded)
    assert torch.equal(run(model, frames), run(loaded, frames))
    # no staging directory is left next to the checkpoint
    assert [p.name for p in checkpoint.parent.iterdir()] == [checkpoint.name]


def test_load_onto_dtype(checkpoint):
    loaded = SSAModel.from_pretrained(str(checkpoint), dtype=torch.float64, device="cpu")
    assert {p.dtype for p in loaded.parameters()} == {torch.float64}
    assert loaded.device == torch.device("cpu")


def test_round_trip_through_offline_hub_cache(model, checkpoint, frames, tmp_path, offline, download_spy):
    repo_id = "ssa-tests/ssa-tiny"
    cache = tmp_path / "hub-cache"
    repo_dir = build_hub_cache(cache, repo_id, checkpoint)

    loaded = SSAModel.from_pretrained(repo_id, cache_dir=cache)
    assert_same_state(model, loaded)
    assert torch.equal(run(model, frames), run(loaded, frames))
    assert {c["filename"] for c in download_spy} == {"config.json", "model.safetensors"}
    for call in download_spy:  # offline: the cache was read with no Hub lookup
        assert call["local_files_only"] is True and call["repo_type"] == "model"
        assert Path(call["result"]).parent == repo_dir / "snapshots" / COMMIT

    # a pinned commit resolves to the same snapshot
    pinned = SSAModel.from_pretrained(repo_id, cache_dir=cache, revision=COMMIT)
    assert_same_state(model, pinned)


def test_hub_cache_with_local_files_only(model, checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    build_hub_cache(tmp_path, "ssa-tests/ssa-tiny", checkpoint)
    loaded = SSAModel.from_pretrained("ssa-tests/ssa-tiny", cache_dir=tmp_path, local_files_only=True)
    assert_same_state(model, loaded)


# ----------------------------------------------------------------------------------------------------
# not found
# ----------------------------------------------------------------------------------------------------
def test_offline_and_not_cached(tmp_path, offline):
    with pytest.raises(WeightsNotFoundError) as info:
        SSAModel.from_pretrained("someone/ssa-not-cached", cache_dir=tmp_path)
    message = str(info.value)
    assert isinstance(info.value, OSError)
    assert "someone/ssa-not-cached" in message and "HF_HUB_OFFLINE" in message
    assert "offline mode" in info.value.reason
    assert "not in the local Hugging Face cache" in message
    assert "huggingface-cli download someone/ssa-not-cached" in message
    assert info.value.repo_id == "someone/ssa-not-cached"


def test_local_files_only_and_not_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(WeightsNotFoundError, match="local_files_only=True"):
        SSAModel.from_pretrained("someone/ssa-not-cached", cache_dir=tmp_path, local_files_only=True)


def _http_error(cls: type[Exception], message: str) -> Exception:
    """An instance of a huggingface_hub HTTP error without an HTTP response (their __init__ needs one)."""
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    return err


@pytest.mark.parametrize(
    ("error_name", "reason"),
    [
        ("RepositoryNotFoundError", "does not exist"),
        ("GatedRepoError", "gated"),
        ("RevisionNotFoundError", "revision 'v9' does not exist"),
    ],
)
def test_hub_errors_are_mapped(monkeypatch, error_name, reason):
    error_cls = getattr(huggingface_hub.utils, error_name)

    def failing_download(repo_id, filename, **kwargs):
        raise _http_error(error_cls, f"404 {error_name}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", failing_download)
    with pytest.raises(WeightsNotFoundError) as info:
        SSAModel.from_pretrained("someone/ssa-model", revision="v9")
    assert "someone/ssa-model" in str(info.value) and reason in str(info.value)


@pytest.mark.parametrize("name", ["./no/such/dir", "a/b/c", "/no/such/ssa/checkpoint"])
def test_name_that_is_neither_path_nor_repo(name, monkeypatch):
    def unreachable(*args, **kwargs):
        raise AssertionError("not a repo id: the Hub must not be asked")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises((FileNotFoundError, ValueError), match="neither an existing local directory"):
        SSAModel.from_pretrained(name)


def test_missing_file_in_directory(checkpoint, tmp_path):
    for name in ("model.safetensors", "config.json"):
        ckpt = copy_checkpoint(checkpoint, tmp_path / f"without-{name}")
        (ckpt / name).unlink()
        with pytest.raises(FileNotFoundError) as info:
            SSAModel.from_pretrained(ckpt)
        assert name in str(info.value) and str(ckpt) in str(info.value)


def test_file_instead_of_directory(checkpoint):
    with pytest.raises(NotADirectoryError, match="directory"):
        SSAModel.from_pretrained(checkpoint / "model.safetensors")


# ----------------------------------------------------------------------------------------------------
# corrupt and mismatching checkpoints
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [0.5, 0.001])  # data cut short / header cut short
def test_truncated_weights(checkpoint, tmp_path, keep):
    ckpt = copy_checkpoint(checkpoint, tmp_path / "truncated")
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(InvalidCheckpointError) as info:
        SSAModel.from_pretrained(ckpt)
    assert str(weights) in str(info.value) and "corrupt" in str(info.value)


def _rewrite_tensor(ckpt: Path, key_part: str, make) -> str:
    """Replace the first tensor whose key contains ``key_part`` by ``make(tensor)``; returns its key."""
    weights = ckpt / "model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        metadata = f.metadata()
    state = load_file(weights)
    key = next(k for k in state if key_part in k)
    state[key] = make(state[key])
    save_file(state, weights, metadata=metadata)
    return key


@pytest.mark.parametrize(("make", "problem"), [
    (lambda t: torch.full_like(t, float("nan")), "NaN or infinite"),  # loaded silently: empty masks
    (lambda t: t.clone().index_fill_(0, torch.tensor([0]), float("inf")), "NaN or infinite"),
    (lambda t: (t * 1000).to(torch.int32), "wrong dtype"),  # cast silently into the float parameter
    (lambda t: t > 0, "wrong dtype"),
])
def test_non_finite_or_integer_weights_are_refused(checkpoint, tmp_path, make, problem):
    ckpt = copy_checkpoint(checkpoint, tmp_path / "damaged")
    key = _rewrite_tensor(ckpt, "video_decoder", make)
    with pytest.raises(InvalidCheckpointError, match=problem) as info:
        SSAModel.from_pretrained(ckpt)
    assert key in str(info.value) and str(ckpt / "model.safetensors") in str(info.value)


def test_nan_weights_are_refused_before_the_clip_download(pretrained_model, fake_clip, tmp_path):
    ckpt = hub.save_pretrained(pretrained_model, tmp_path / "trainable")
    key = _rewrite_tensor(ckpt, "frame_decoder", lambda t: torch.full_like(t, float("nan")))
    with pytest.raises(InvalidCheckpointError, match=f"NaN or infinite values: {key}"):
        SSAModel.from_pretrained(ckpt)
    assert fake_clip == []


def test_half_precision_weights_still_load(model, checkpoint, tmp_path):
    ckpt = copy_checkpoint(checkpoint, tmp_path / "half")
    key = _rewrite_tensor(ckpt, "video_decoder", lambda t: t.to(torch.bfloat16))
    loaded = SSAModel.from_pretrained(ckpt)
    assert torch.equal(loaded.state_dict()[key], model.state_dict()[key].to(torch.bfloat16).float())


def test_bad_config(checkpoint, tmp_path):
    ckpt = copy_checkpoint(checkpoint, tmp_path / "bad-json")
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
        SSAModel.from_pretrained(ckpt)
    values = json.loads((checkpoint / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**values, "no_such_field": 1}))
    with pytest.raises(ValueError, match=r"config\.json.*no_such_field"):
        SSAModel.from_pretrained(ckpt)


@pytest.mark.parametrize(("field", "value", "key"), [
    ("hidden_dim", 32, "checkpoint shape"),
    ("num_queries", 12, "query"),
])
def test_config_not_matching_tensors(checkpoint, tmp_path, fake_clip, field, value, key):
    ckpt = copy_checkpoint(checkpoint, tmp_path / "mismatch")
    values = json.loads((ckpt / "config.json").read_text())
    values[field] = value
    (ckpt / "config.json").write_text(json.dumps(values))
    with pytest.raises(ValueError, match="does not match") as info:
        SSAModel.from_pretrained(ckpt)
    assert key in str(info.value)
    assert fake_clip == []


def test_trainable_checkpoint_mismatch_fails_before_clip_download(pretrained_model, fake_clip, tmp_path):
    ckpt = hub.save_pretrained(pretrained_model, tmp_path / "trainable")
    values = json.loads((ckpt / "config.json").read_text())
    values["num_queries"] = 12
    (ckpt / "config.json").write_text(json.dumps(values))
    with pytest.raises(ValueError, match=r"checkpoint shape \(8, 64\) vs config shape \(12, 64\)"):
        SSAModel.from_pretrained(ckpt)
    assert fake_clip == []  # failed on the meta-device comparison, no CLIP fetched


def test_strict_rejects_extra_keys(model, checkpoint, tmp_path, frames):
    ckpt = copy_checkpoint(checkpoint, tmp_path / "extra")
    weights = ckpt / "model.safetensors"
    state = load_file(str(weights))
    state["extra.weight"] = torch.zeros(3)
    save_file(state, str(weights), metadata={"format": "pt", "ssa_weights": "full"})
    with pytest.raises(ValueError, match=r"1 unexpected key\(s\): \['extra.weight'\]"):
        SSAModel.from_pretrained(ckpt)
    loose = SSAModel.from_pretrained(ckpt, strict=False)
    assert torch.equal(run(model, frames), run(loose, frames))


# ----------------------------------------------------------------------------------------------------
# saving safely
# ----------------------------------------------------------------------------------------------------
def test_existing_checkpoint_is_not_overwritten(model, checkpoint, tmp_path, frames):
    ckpt = copy_checkpoint(checkpoint, tmp_path / "existing")
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    other = build("ssa-tiny", seed=7)
    with pytest.raises(FileExistsError) as info:
        other.save_pretrained(ckpt)
    assert str(ckpt) in str(info.value) and "overwrite=True" in str(info.value)
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before

    other.save_pretrained(ckpt, overwrite=True)
    assert (ckpt / "model.safetensors").read_bytes() != before["model.safetensors"]
    assert torch.equal(run(other, frames), run(SSAModel.from_pretrained(ckpt), frames))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]


def test_user_readme_is_kept(model, tmp_path):
    (tmp_path / "README.md").write_text("my notes")
    hub.save_pretrained(model, tmp_path)
    assert (tmp_path / "README.md").read_text() == "my notes"
    assert (tmp_path / "model.safetensors").is_file()


def test_failed_save_leaves_nothing_behind(model, checkpoint, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(hub, "_write_safetensors", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        hub.save_pretrained(model, tmp_path / "new")
    assert list(tmp_path.iterdir()) == []  # neither the target nor a staging directory

    ckpt = copy_checkpoint(checkpoint, tmp_path / "old")
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    with pytest.raises(RuntimeError, match="disk full"):
        build("ssa-tiny", seed=7).save_pretrained(ckpt, overwrite=True)
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_full_disk_while_saving_is_an_oserror(model, tmp_path, monkeypatch):
    """safetensors reports a full disk as a SafetensorError; the message is the one it gives on a full
    tmpfs (checked by hand: ``Error while serializing: I/O error: No space left on device (os error 28)``)."""
    import errno

    import safetensors.torch
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OSError, match="No space left on device") as info:
        hub.save_pretrained(model, tmp_path / "new")
    assert info.value.errno == errno.ENOSPC and info.value.filename.endswith("model.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_kill_before_new_weights_never_pairs_new_config_with_old_weights(checkpoint, tmp_path, monkeypatch):
    """Overwriting dies after the new config is in place: the old weights must already be gone."""
    ckpt = copy_checkpoint(checkpoint, tmp_path / "ckpt")
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst) == ckpt / "model.safetensors":
            raise KeyboardInterrupt("killed")
        real_replace(src, dst)

    monkeypatch.setattr(hub.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        build("ssa-tiny", seed=7).save_pretrained(ckpt, overwrite=True)
    monkeypatch.setattr(hub.os, "replace", real_replace)
    assert not (ckpt / "model.safetensors").exists()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        SSAModel.from_pretrained(ckpt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_weights_argument(model, tmp_path):
    with pytest.raises(ValueError, match="clip_pretrained"):
        hub.save_pretrained(model, tmp_path / "t", weights="trainable")
    with pytest.raises(ValueError, match="weights must be one of"):
        hub.save_pretrained(model, tmp_path / "t", weights="half")
    assert not (tmp_path / "t").exists()


# ----------------------------------------------------------------------------------------------------
# trainable-only checkpoints
# ----------------------------------------------------------------------------------------------------
def test_trainable_checkpoint(pretrained_model, fake_clip, checkpoint, tmp_path, frames):
    ckpt = pretrained_model.save_pretrained(tmp_path / "trainable")  # auto -> trainable
    weights = ckpt / "model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        assert f.metadata()["ssa_weights"] == "trainable"
        keys = list(f.keys())
    assert keys and not any(k.startswith("backbone.") for k in keys)
    assert weights.stat().st_size * 5 < (checkpoint / "model.safetensors").stat().st_size

    loaded = SSAModel.from_pretrained(ckpt, cache_dir=tmp_path / "clip-cache")
    assert fake_clip == [(FAKE_TAG, str(tmp_path / "clip-cache"))]
    assert loaded.config.clip_pretrained == FAKE_TAG
    assert_same_state(pretrained_model, loaded)
    assert torch.equal(run(pretrained_model, frames), run(loaded, frames))


def test_full_checkpoint_of_pretrained_model_needs_no_download(pretrained_model, fake_clip, tmp_path, frames):
    ckpt = pretrained_model.save_pretrained(tmp_path / "full", weights="full")
    loaded = SSAModel.from_pretrained(ckpt)
    assert fake_clip == []
    assert loaded.config == pretrained_model.config
    assert torch.equal(run(pretrained_model, frames), run(loaded, frames))


def test_auto_saves_unfrozen_clip_in_full(fake_clip, tmp_path):
    model = SSAModel(SSAConfig.from_preset("ssa-tiny", clip_pretrained=FAKE_TAG))
    model.backbone.clip.ln_final.weight.requires_grad_(True)
    ckpt = hub.save_pretrained(model, tmp_path / "unfrozen")
    with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f:
        assert f.metadata()["ssa_weights"] == "full"


def test_trainable_checkpoint_without_pretrained_tag_is_rejected(pretrained_model, tmp_path):
    ckpt = pretrained_model.save_pretrained(tmp_path / "trainable")
    values = json.loads((ckpt / "config.json").read_text())
    values["clip_pretrained"] = None
    (ckpt / "config.json").write_text(json.dumps(values))
    with pytest.raises(ValueError, match="only trainable weights"):
        SSAModel.from_pretrained(ckpt)


def test_clip_download_failure_is_weights_not_found(pretrained_model, tmp_path, monkeypatch):
    ckpt = pretrained_model.save_pretrained(tmp_path / "trainable")

    def unavailable(self, tag, cache_dir=None):
        raise RuntimeError("could not fetch CLIP weights") from huggingface_hub.utils.LocalEntryNotFoundError(
            "not cached")

    monkeypatch.setattr(FrozenCLIP, "load_pretrained", unavailable)
    with pytest.raises(WeightsNotFoundError, match="frozen CLIP could not be fetched"):
        SSAModel.from_pretrained(ckpt)


# ----------------------------------------------------------------------------------------------------
# model card and push_to_hub
# ----------------------------------------------------------------------------------------------------
def test_model_card(model, checkpoint):
    card = ModelCard.load(checkpoint / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "ssa"
    assert data["tags"] == ["referring-video-object-segmentation", "video-segmentation", "ssa", "pytorch"]
    assert data["license"] == "apache-2.0" and data["pipeline_tag"] == "mask-generation"
    assert "base_model" not in data  # random CLIP
    text = card.text
    assert "Semantic and Sequential Alignment for Referring Video Object Segmentation" in text
    assert "https://github.com/tavarich/SSA" in text and "ssa-tiny" in text
    assert 'SSAPipeline.from_pretrained("path/to/ssa-tiny")' in text  # no made-up repo id
    assert f"{model.num_parameters():,}" in text


def test_model_card_base_model_for_pretrained_clip():
    config = SSAConfig.from_preset("ssa-convnext-large")
    assert model_card.clip_base_model(config) == "laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup"
    text = model_card.render_model_card(config, weights="trainable", repo_id="org/ssa-large")
    card = ModelCard(text)
    assert card.data.base_model == "laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup"
    assert 'SSAPipeline.from_pretrained("org/ssa-large")' in text
    assert model_card.clip_base_model(dataclasses.replace(config, clip_pretrained=None)) is None


def test_push_to_hub(model, monkeypatch):
    calls: dict[str, dict] = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = {"repo_id": repo_id, **kwargs}
        return huggingface_hub.hf_api.RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_branch(self, repo_id, **kwargs):
        calls["create_branch"] = {"repo_id": repo_id, **kwargs}

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        calls["upload_folder"] = {
            **kwargs,
            "files": sorted(p.name for p in folder.iterdir()),
            "config": json.loads((folder / "config.json").read_text()),
            "readme": (folder / "README.md").read_text(),
        }
        return huggingface_hub.hf_api.CommitInfo(
            commit_url="https://huggingface.co/org/ssa-tiny/commit/abc", commit_message="m",
            commit_description="", oid="abc",
        )

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_branch", create_branch)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)

    url = model.push_to_hub("org/ssa-tiny", private=True, token="hf_test", revision="dev")
    assert url == "https://huggingface.co/org/ssa-tiny/commit/abc"
    assert calls["create_repo"]["repo_id"] == "org/ssa-tiny"
    assert calls["create_repo"]["private"] is True and calls["create_repo"]["exist_ok"] is True
    assert calls["create_branch"]["branch"] == "dev"
    upload = calls["upload_folder"]
    assert upload["repo_id"] == "org/ssa-tiny" and upload["revision"] == "dev"
    assert upload["commit_message"] == "Upload SSA model"
    assert upload["files"] == ["README.md", "config.json", "model.safetensors"]
    assert upload["config"] == model.config.to_dict()
    assert 'SSAPipeline.from_pretrained("org/ssa-tiny")' in upload["readme"]
    assert not Path(upload["folder_path"]).exists()  # the staging folder is cleaned up


# ----------------------------------------------------------------------------------------------------
# .pth import
# ----------------------------------------------------------------------------------------------------
def test_pth_state_dict(model, tmp_path):
    state = {k: v.clone() for k, v in list(model.state_dict().items())[:10]}
    for i, wrapped in enumerate([state, {"model": state, "epoch": 3}, {"state_dict": state}]):
        path = tmp_path / f"ckpt{i}.pth"
        torch.save(wrapped, path)
        loaded = hub.load_pth_state_dict(path)
        assert loaded.keys() == state.keys()
        assert all(torch.equal(loaded[k], state[k]) for k in state)


class _Payload:
    """Unpickling this runs code (touches a file): what weights_only=True must refuse."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pth_refuses_arbitrary_objects(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "extra": _Payload(marker)}, path)
    with pytest.raises(pickle.UnpicklingError, match="evil.pth"):
        hub.load_pth_state_dict(path)
    assert not marker.exists()
    with pytest.raises(FileNotFoundError):
        hub.load_pth_state_dict(tmp_path / "missing.pth")


def test_the_model_card_names_the_weights_file_the_hub_writes():
    assert model_card.WEIGHTS_FILE == hub.WEIGHTS_NAME
