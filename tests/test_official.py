"""The authors' checkpoints: ``ssa.convert`` against the official code's outputs.

Reference material (``$SSA_OFFICIAL_FIXTURES``, default ``<repo>/../shared/official``): a small
checkpoint in the official detectron2 format (``fixtures/tiny/model_final.pth``), the official code's
outputs on it stage by stage (``fixtures/tiny/cases/<case>/``), and the key list of a released
paper-scale checkpoint (``official_keys_mevis.txt``). Every stage is fed the official inputs of that
stage (and the visual pass is also run chained), so a difference points at one module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor

import ssa
import ssa.cli
import ssa.convert
import ssa.hub
import ssa.official
from ssa import SSAConfig, SSAModel
from ssa.convert import OfficialCheckpointError, convert_official
from ssa.modeling.sequential_alignment import apply_order
from ssa.official import convert_state_dict

OFFICIAL = Path(
    os.environ.get("SSA_OFFICIAL_FIXTURES") or Path(__file__).resolve().parents[2] / "shared" / "official"
)
TINY = OFFICIAL / "fixtures" / "tiny"
CHECKPOINT = TINY / "model_final.pth"
KEYS_FILE = OFFICIAL / "official_keys_mevis.txt"

if not CHECKPOINT.is_file() or not (TINY / "cases").is_dir():
    pytest.skip(
        f"the official reference fixtures are not at {OFFICIAL} (no fixtures/tiny/model_final.pth or "
        "fixtures/tiny/cases/); set SSA_OFFICIAL_FIXTURES to the folder holding them",
        allow_module_level=True,
    )

CASES = sorted(p.name for p in (TINY / "cases").iterdir() if (p / "tensors.safetensors").is_file())
ATOL = 1e-4

# Parameter counts of the official networks (meta.json of the fixture; official_keys_mevis.txt).
TINY_TRAINABLE, TINY_TRAINABLE_NO_ADAPTERS, TINY_FROZEN = 2_914_321, 1_212_805, 2_063_841
PAPER_TRAINABLE, PAPER_TRAINABLE_NO_ADAPTERS = 46_847_569, 39_832_517


def tiny_official_config() -> SSAConfig:
    """The network of ``fixtures/tiny/model_final.pth`` (its README and ``meta.json``'s config):
    CLIP with embed 64 on a ConvNeXt trunk of depths (1, 1, 2, 1) and dims (32, 64, 96, 128), a text
    tower of width 32; hidden width 64, 8 queries, 2 pixel-decoder layers, 3 + 1 frame-decoder layers,
    2 video-decoder layers, feed-forward 128. The adapters, the pixel decoder's feed-forward and the
    fusion blocks keep the released sizes (ssa's defaults)."""
    return SSAConfig(
        clip_model="", clip_pretrained=None,
        clip_config={
            "embed_dim": 64,
            "vision_cfg": {"timm_model_name": "convnext_atto", "timm_model_pretrained": False,
                           "timm_pool": "", "timm_proj": "mlp", "timm_drop": 0.0, "timm_drop_path": 0.1,
                           "image_size": 64},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
        },
        clip_trunk={"depths": [1, 1, 2, 1], "dims": [32, 64, 96, 128]},
        hidden_dim=64, num_queries=8, num_heads=8, mask_dim=64,
        pixel_decoder_layers=2, frame_decoder_layers=3, frame_decoder_ffn_dim=128,
        video_decoder_layers=2, video_decoder_ffn_dim=128,
    )


@pytest.fixture(scope="module")
def converted() -> SSAModel:
    return convert_official(CHECKPOINT, tiny_official_config())


@pytest.fixture(scope="module")
def official_state() -> dict[str, Tensor]:
    return torch.load(CHECKPOINT, map_location="cpu", weights_only=True)["model"]


# ----------------------------------------------------------------------------------------------------
# stage by stage against the official outputs
# ----------------------------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    ref: dict[str, Tensor]
    meta: dict


def load_case(name: str) -> Case:
    from safetensors.torch import load_file

    folder = TINY / "cases" / name
    meta = json.loads((folder / "meta.json").read_text())
    return Case(name, load_file(folder / "tensors.safetensors"), meta)


@torch.no_grad()
def stage_diffs(model: SSAModel, case: Case) -> dict[str, float]:
    """Max |ours - official| of every stage, each fed the official inputs of that stage, plus the
    chained visual pass ``encode_stages`` (keys ending in ``(chained)``) and the whole network,
    ``model(frames, sentence)`` (keys starting with ``forward:``). A shape mismatch is ``inf``; token
    and word-mask equality are 0 or ``inf``."""
    R, sentence = case.ref, case.meta["sentence"]
    diffs: dict[str, float] = {}

    def diff(name: str, ours: Tensor, ref_name: str | None = None, ref: Tensor | None = None) -> None:
        ref = case.ref[ref_name or name] if ref is None else ref
        if ours.numel() != ref.numel():
            diffs[name] = float("inf")
            return
        diffs[name] = float((ours.reshape(ref.shape).float() - ref.float()).abs().max())

    # text
    tokens, _ = model.backbone.tokenize(sentence)
    ref_tokens = R["text.tokens"]
    same = tokens.shape[1] <= ref_tokens.shape[1] and torch.equal(tokens[0], ref_tokens[0, :tokens.shape[1]])
    same = same and not ref_tokens[0, tokens.shape[1]:].any()
    diffs["text.tokens"] = 0.0 if same else float("inf")
    text = model.encode_text(sentence)
    diff("text.word_feat", text.words)
    diff("text.sentence_feat", text.sentence)
    diffs["text.word_mask"] = 0.0 if torch.equal(text.word_mask.to(torch.uint8), R["text.word_mask"]) \
        else float("inf")

    # visual pass: stem, stage 0, each adapter and each stage on the official inputs, then chained
    x = R["backbone.input_normalized"]
    t = x.shape[0]
    trunk = model.backbone.clip.visual.trunk
    diff("backbone.stem", trunk.stem(x))
    stem = model.backbone.encode_stem(x)
    diff("backbone.stage0_pre_adapter", stem)
    words, word_mask = text.words.expand(t, -1, -1), text.word_mask.expand(t, -1)
    sent = text.sentence.expand(t, -1)
    ref_words, ref_mask = R["text.word_feat"].expand(t, -1, -1), R["text.word_mask"].bool().expand(t, -1)
    ref_sent = R["text.sentence_feat"].expand(t, -1)
    for i in range(4):
        adapted, _ = model.adapters[i](R[f"backbone.stage{i}_pre_adapter"], ref_words, ref_mask, ref_sent)
        diff(f"backbone.res{i + 2}", adapted)
    for i in range(1, 4):
        diff(f"backbone.stage{i}_pre_adapter", model.backbone.run_stage(i, R[f"backbone.res{i + 1}"]))
    features, _ = model.encode_stages(stem, words, word_mask, sent)
    for i in range(4):
        diff(f"backbone.res{i + 2} (chained)", features[i], f"backbone.res{i + 2}")

    # text resizer and pixel decoder. The official code resizes the sentence once per chunk of frames
    # (s0_20f ran as 18 + 2 frames: (2, 1, C), equal rows); the first chunk's is the sentence's.
    resized = R["text.resized_sentence"][:1]
    diff("text.resized_sentence", model.text_resizer(R["text.sentence_feat"])[:, None], ref=resized)
    fpn: list[Tensor] = []
    hook = model.pixel_decoder.output_conv.register_forward_hook(lambda m, i, o: fpn.append(o))
    try:
        pd = model.decode_pixels([R[f"backbone.res{i}"] for i in range(2, 6)],
                                 resized.expand(t, -1, -1))
    finally:
        hook.remove()
    diff("pixel_decoder.encoder_memory", pd.memory)
    diff("pixel_decoder.encoder_text", pd.text)
    for i in range(3):
        diff(f"pixel_decoder.multi_scale_{i}", pd.multi_scale[i])
    diff("pixel_decoder.out_last", fpn[0])
    diff("pixel_decoder.mask_features", pd.mask_features)
    diff("video.mask_features", pd.video_mask_features)

    # frame decoder
    dec = model.frame_decoder(R["pixel_decoder.text_features"],
                              [R[f"pixel_decoder.multi_scale_{i}"] for i in range(3)],
                              R["pixel_decoder.mask_features"])
    diff("frame.pred_logits", dec.class_logits)
    diff("frame.pred_masks", dec.mask_logits)
    for k in range(len(dec.aux_class_logits)):
        diff(f"frame.aux{k}.pred_logits", dec.aux_class_logits[k])
        diff(f"frame.aux{k}.pred_masks", dec.aux_mask_logits[k])
    if f"frame.aux{len(dec.aux_class_logits)}.pred_logits" in R:  # fewer decoder layers than the official
        diffs["frame.aux (count)"] = float("inf")
    diff("frame.frame_queries", dec.queries)

    # sequence stage (Hungarian trajectories) on the official frame queries, then the video decoder
    seq = model.decode_sequence(R["video.in_frame_queries"], R["video.in_lang_feat"][:, 0][None])
    diff("video.matched_enhanced_frame_queries", seq.trajectories[0])
    diff("video.time_weight_logits", model.ensemble.logits(seq.trajectories)[0])
    diff("video.pred_logits", seq.class_logits)
    diff("video.pred_mask_embed", seq.mask_embed)
    diff("derived.video.scores", seq.class_logits.softmax(-1)[0, :, :1])
    diff("derived.video.mask_logits_all_queries",
         torch.einsum("nc,tchw->nthw", seq.mask_embed[0], R["video.mask_features"]))
    # the similarity heads (training only): frame embeddings of the projected, re-ordered frame queries
    projected = model.sequence_proj(R["video.in_frame_queries"])
    diff("video.pred_fq_embed", model.video_decoder.sim_frame(apply_order(projected, seq.trajectory_order)))
    diff("video.pred_cq_embed", model.video_decoder.sim_clip(seq.video_queries))

    # the whole network on the frames (Hungarian on our own frame queries: see the margins in the
    # fixture's README; the per-frame stages ran in chunks officially, which changes nothing)
    out = model(x, sentence)
    diff("forward: frame.frame_queries", out.frame_queries, "frame.frame_queries")
    diff("forward: video.pred_logits", out.class_logits, "video.pred_logits")
    diff("forward: derived.video.mask_logits_all_queries", out.mask_logits[0],
         "derived.video.mask_logits_all_queries")
    return diffs


_STAGES = {
    "text": r"^text\.(tokens|word_feat|word_mask|sentence_feat)$",
    "trunk": r"^backbone\.(stem|stage\d_pre_adapter)$",
    "adapters": r"^backbone\.res\d$",
    "chained visual pass": r"^backbone\.res\d \(chained\)$",
    "text resizer": r"^text\.resized_sentence$",
    "pixel decoder": r"^(pixel_decoder\.|video\.mask_features$)",
    "frame decoder": r"^frame\.",
    "sequence stage": r"^(video\.(matched|time_weight|pred_)|derived\.)",
    "whole network": r"^forward: ",
}


@pytest.fixture(scope="module", params=CASES)
def case_diffs(request, converted) -> tuple[str, dict[str, float]]:
    case = load_case(request.param)
    return case.name, stage_diffs(converted, case)


def test_stage_groups_cover_the_comparisons(case_diffs):
    _, diffs = case_diffs
    stages = {name: [k for k in diffs if re.search(pattern, k)] for name, pattern in _STAGES.items()}
    assert all(stages.values()), {k: v for k, v in stages.items() if not v}
    assert sorted(k for v in stages.values() for k in v) == sorted(diffs)
    assert len(stages["adapters"]) == 4 and len(stages["chained visual pass"]) == 4
    assert len(stages["trunk"]) == 5  # stem, stage 0 and stages 1-3 on the adapted maps
    assert sum(k.startswith("frame.aux") for k in diffs) == 2 * 3  # 3 earlier predictions


@pytest.mark.parametrize("stage", list(_STAGES))
def test_stage_matches_official(case_diffs, stage):
    name, diffs = case_diffs
    selected = {k: v for k, v in diffs.items() if re.search(_STAGES[stage], k)}
    bad = {k: v for k, v in selected.items() if not v <= ATOL}
    assert selected and not bad, f"{name}: {stage} differs from the official outputs (max |diff|): {bad}"


def test_trunk_in_token_chunks_matches_official(converted, monkeypatch):
    """CPU inference runs large ConvNeXt stages' pointwise part in token chunks; forced on for every
    stage (with chunks that do not divide the token count), the trunk, the chained visual pass and the
    whole network still give the official outputs."""
    import ssa.modeling.backbone as backbone_module

    calls = []
    original = backbone_module._convnext_blocks_in_token_chunks
    monkeypatch.setattr(backbone_module, "_convnext_blocks_in_token_chunks",
                        lambda blocks, x: calls.append(x.shape) or original(blocks, x))
    monkeypatch.setattr(backbone_module, "_CHUNKED_MLP_BYTES", 0)
    monkeypatch.setattr(backbone_module, "_TOKEN_CHUNK", 37)
    case = load_case(CASES[0])
    diffs = stage_diffs(converted, case)
    assert len(calls) >= 4  # every stage took the chunked path
    for stage in ("trunk", "chained visual pass", "whole network"):
        selected = {k: v for k, v in diffs.items() if re.search(_STAGES[stage], k)}
        bad = {k: v for k, v in selected.items() if not v <= ATOL}
        assert selected and not bad, f"{case.name}: {stage} differs in token chunks: {bad}"


# ----------------------------------------------------------------------------------------------------
# parameters
# ----------------------------------------------------------------------------------------------------
def _counts(model: SSAModel) -> tuple[int, int, int]:
    """(trainable, trainable without the adapters, frozen)."""
    trainable = model.num_parameters(trainable_only=True)
    adapters = sum(p.numel() for n, p in model.named_parameters()
                   if n.startswith("adapters.") and p.requires_grad)
    return trainable, trainable - adapters, model.num_parameters() - trainable


def test_converted_parameter_counts(converted):
    assert _counts(converted) == (TINY_TRAINABLE, TINY_TRAINABLE_NO_ADAPTERS, TINY_FROZEN)
    assert not converted.training


def test_converted_keeps_every_checkpoint_tensor(converted, official_state):
    state = converted.state_dict()
    for key, value in official_state.items():
        target = ssa.official.official_key(key)
        if target is None:
            assert key in {"criterion.empty_weight", "vita_criterion.empty_weight"}, key
            continue
        assert torch.equal(state[target], value), key


# ----------------------------------------------------------------------------------------------------
# the paper's network, from the key list of a released checkpoint (no weights)
# ----------------------------------------------------------------------------------------------------
def read_key_list(path: Path) -> tuple[dict[str, tuple[tuple[int, ...], str]], dict[str, int]]:
    """``official_keys_mevis.txt``: ``{key: (shape, kind)}`` from its ``key<TAB>shape<TAB>numel<TAB>kind
    <TAB>dtype`` lines, and the totals of its ``# TOTAL ... : N`` footer."""
    keys: dict[str, tuple[tuple[int, ...], str]] = {}
    totals: dict[str, int] = {}
    for line in path.read_text().splitlines():
        total = re.match(r"#\s*TOTAL (.+?)\s*:\s*([\d,]+)", line)
        if total:
            totals[total.group(1).strip()] = int(total.group(2).replace(",", ""))
        if not line.strip() or line.startswith("#"):
            continue
        key, shape, numel, kind, _dtype = line.split("\t")
        dims = tuple(json.loads(shape))
        assert int(numel) == (torch.Size(dims).numel()), line
        keys[key] = (dims, kind)
    return keys, totals


@pytest.mark.slow
def test_paper_scale_key_map():
    if not KEYS_FILE.is_file():
        pytest.skip(f"no {KEYS_FILE}")
    keys, totals = read_key_list(KEYS_FILE)
    assert totals["trainable parameters"] == PAPER_TRAINABLE
    assert totals["trainable without the adapters"] == PAPER_TRAINABLE_NO_ADAPTERS
    assert sum(torch.Size(s).numel() for s, kind in keys.values() if kind == "trainable") == PAPER_TRAINABLE

    with torch.device("meta"):
        skeleton = SSAModel(SSAConfig.from_preset("ssa-convnext-large", clip_pretrained=None))
        official = {key: torch.empty(shape) for key, (shape, _) in keys.items()}
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    converted = convert_state_dict(official, expected, source=KEYS_FILE.name)  # raises on any mismatch
    assert converted.keys() == expected.keys()
    assert all(tuple(converted[k].shape) == expected[k] for k in expected)
    assert _counts(skeleton)[:2] == (PAPER_TRAINABLE, PAPER_TRAINABLE_NO_ADAPTERS)
    assert _counts(skeleton)[2] == totals["frozen parameters"]
    # trainable and frozen are the same tensors on both sides
    frozen_official = {ssa.official.official_key(k) for k, (_, kind) in keys.items() if kind == "frozen"}
    frozen_ours = {n for n, p in skeleton.named_parameters() if not p.requires_grad}
    assert frozen_official == frozen_ours


# ----------------------------------------------------------------------------------------------------
# checkpoints that must be refused
# ----------------------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this runs code (creates a file): what weights_only=True must refuse."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


class _Detectron2Config:
    """A stand-in for a config object pickled into a checkpoint."""

    def __init__(self) -> None:
        self.MODEL = {"WEIGHTS": "x"}


def _convert(path: Path) -> SSAModel:
    return convert_official(path, tiny_official_config())


def test_refuses_missing_key(official_state, tmp_path):
    state = dict(official_state)
    del state["sem_seg_head.predictor.class_embed.weight"]
    torch.save({"model": state, "iteration": 1}, tmp_path / "missing.pth")
    with pytest.raises(OfficialCheckpointError, match="missing") as info:
        _convert(tmp_path / "missing.pth")
    assert "frame_decoder.class_head.weight" in str(info.value)
    assert "missing.pth" in str(info.value)


def test_refuses_extra_key(official_state, tmp_path):
    state = {**official_state, "sem_seg_head.predictor.extra_head.weight": torch.zeros(3)}
    torch.save({"model": state}, tmp_path / "extra.pth")
    with pytest.raises(OfficialCheckpointError, match="no place in the network") as info:
        _convert(tmp_path / "extra.pth")
    assert "sem_seg_head.predictor.extra_head.weight" in str(info.value)


def test_refuses_wrong_shape(official_state, tmp_path):
    key = "vita_module.class_embed.weight"
    state = {**official_state, key: torch.zeros(3, official_state[key].shape[1])}
    torch.save({"model": state}, tmp_path / "shape.pth")
    with pytest.raises(OfficialCheckpointError, match="shape mismatch") as info:
        _convert(tmp_path / "shape.pth")
    assert key in str(info.value) and f"(3, {official_state[key].shape[1]})" in str(info.value)


@pytest.mark.parametrize(("make", "problem"), [
    (lambda t: torch.full_like(t, float("nan")), "NaN or infinite"),
    (lambda t: t.to(torch.int32), "wrong dtype"),
])
def test_refuses_nan_or_integer_weights(official_state, tmp_path, make, problem):
    key = "vita_module.class_embed.weight"
    torch.save({"model": {**official_state, key: make(official_state[key])}}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=problem) as info:
        _convert(tmp_path / "bad.pth")
    assert "video_decoder.class_head.weight" in str(info.value) and "bad.pth" in str(info.value)


def test_refuses_paper_checkpoint_with_wrong_config(official_state, tmp_path):
    torch.save({"model": official_state}, tmp_path / "tiny.pth")
    config = dataclasses.replace(tiny_official_config(), hidden_dim=128, mask_dim=128)
    with pytest.raises(OfficialCheckpointError, match="config"):
        convert_official(tmp_path / "tiny.pth", config)


def test_refuses_pickled_objects_without_unpickling(official_state, tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"model": dict(official_state), "cfg": _Payload(marker)}, tmp_path / "code.pth")
    with pytest.raises(OfficialCheckpointError, match="refusing to unpickle it .*weights_only=True"):
        _convert(tmp_path / "code.pth")
    assert not marker.exists()

    torch.save({"model": dict(official_state), "cfg": _Detectron2Config()}, tmp_path / "objects.pth")
    with pytest.raises(OfficialCheckpointError, match="refusing to unpickle") as info:
        _convert(tmp_path / "objects.pth")
    assert "_Detectron2Config" in str(info.value) and "objects.pth" in str(info.value)


@pytest.mark.parametrize("content", [b"", os.urandom(4096), b"not a checkpoint\n", b"\x93NUMPY\x01\x00"],
                         ids=["empty", "random", "text", "numpy"])
def test_refuses_non_torch_file(tmp_path, content):
    path = tmp_path / "model_final.pth"
    path.write_bytes(content)
    with pytest.raises(OfficialCheckpointError, match="not a PyTorch checkpoint file"):
        _convert(path)


def test_refuses_truncated_file(tmp_path):
    data = CHECKPOINT.read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OfficialCheckpointError, match="truncated or corrupt"):
        _convert(path)


@pytest.mark.parametrize("obj", [
    {"weight": torch.zeros(4, 4)},
    {"model": {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 2048)}},
    {"state_dict": {"conv1.weight": torch.zeros(2)}},
    {"model": {"sem_seg_head.x": torch.zeros(1), "iteration": 3}},
    [torch.zeros(2)],
], ids=["plain", "resnet-like", "lightning-like", "non-tensor-entry", "list"])
def test_refuses_other_torch_files(tmp_path, obj):
    torch.save(obj, tmp_path / "other.pth")
    with pytest.raises(OfficialCheckpointError, match="official SSA network|non-tensor") as info:
        _convert(tmp_path / "other.pth")
    assert "other.pth" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        _convert(tmp_path / "nope.pth")


# ----------------------------------------------------------------------------------------------------
# from_pretrained("x.pth") and the CLI
# ----------------------------------------------------------------------------------------------------
def _same_state(a: SSAModel, b: SSAModel) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_from_pretrained_pth(converted):
    model = SSAModel.from_pretrained(CHECKPOINT, config=tiny_official_config(), dtype=torch.float64)
    assert not model.training and next(model.parameters()).dtype == torch.float64
    assert model.config == converted.config
    model = SSAModel.from_pretrained(str(CHECKPOINT), config=tiny_official_config())
    assert _same_state(model, converted)
    assert ssa.convert_official is convert_official


def test_from_pretrained_pth_errors(tmp_path, converted):
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        SSAModel.from_pretrained(tmp_path / "absent.pth")
    folder = converted.save_pretrained(tmp_path / "folder", weights="full")
    with pytest.raises(ValueError, match="config= applies only to official .pth"):
        SSAModel.from_pretrained(folder, config=tiny_official_config())
    (tmp_path / "bad.pt").write_text("hello")
    with pytest.raises(OfficialCheckpointError, match="not a PyTorch checkpoint file"):
        SSAModel.from_pretrained(tmp_path / "bad.pt", config=tiny_official_config())


@pytest.fixture()
def config_json(tmp_path) -> Path:
    path = tmp_path / "tiny_official.json"
    path.write_text(tiny_official_config().to_json())
    return path


def test_cli_convert(tmp_path, converted, config_json):
    out = tmp_path / "conv"
    rc = ssa.cli.main(["convert", str(CHECKPOINT), "--out", str(out), "--config", str(config_json),
                       "--dataset", "mevis"])
    assert rc == 0
    loaded = SSAModel.from_pretrained(out)
    assert _same_state(loaded, converted)
    assert loaded.config.selection == "multi" and loaded.config.image_size == 448
    card = (out / "README.md").read_text()
    sha = hashlib.sha256(CHECKPOINT.read_bytes()).hexdigest()
    assert "Converted from the authors' checkpoint" in card
    assert "model_final.pth" in card and sha in card
    assert "48.56" in card and "49.37" in card and "MeViS" in card


def test_cli_convert_dataset_sets_test_behaviour(tmp_path, config_json):
    out = tmp_path / "ytvos"
    assert ssa.cli.main(["convert", str(CHECKPOINT), "--out", str(out), "--config", str(config_json),
                         "--dataset", "ytvos"]) == 0
    config = SSAConfig.from_json(out / "config.json")
    assert (config.selection, config.image_size) == ("single", 480)
    card = (out / "README.md").read_text()
    assert "64.3" in card and "Ref-YouTube-VOS" in card and "49.37" not in card


def test_cli_convert_refuses_before_converting(tmp_path, monkeypatch, config_json):
    calls = []

    def fail(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("convert_official must not run")

    monkeypatch.setattr(ssa.convert, "convert_official", fail)
    out = tmp_path / "conv"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    base = ["convert", str(CHECKPOINT), "--config", str(config_json)]
    assert ssa.cli.main([*base, "--out", str(out)]) == 2  # non-empty, no --overwrite
    assert ssa.cli.main(["convert", str(tmp_path / "absent.pth"), "--out", str(tmp_path / "o")]) == 2
    absent_config = ["--config", str(tmp_path / "absent.json")]
    assert ssa.cli.main([*base[:2], *absent_config, "--out", str(tmp_path / "o")]) == 2
    assert calls == [] and (out / "keep.txt").read_text() == "x" and not (tmp_path / "o").exists()
    with pytest.raises(RuntimeError, match="must not run"):  # with --overwrite it gets as far
        ssa.cli.main([*base, "--out", str(out), "--overwrite"])
    assert len(calls) == 1


def test_cli_convert_overwrite(tmp_path, converted, config_json):
    out = tmp_path / "conv"
    out.mkdir()
    (out / "notes.txt").write_text("x")
    assert ssa.cli.main(["convert", str(CHECKPOINT), "--out", str(out), "--config", str(config_json),
                         "--overwrite"]) == 0
    assert _same_state(SSAModel.from_pretrained(out), converted)
    card = (out / "README.md").read_text()
    assert "J&F" not in card  # no --dataset: no paper number


def test_cli_convert_bad_checkpoint(tmp_path, config_json, caplog):
    bad = tmp_path / "bad.pth"
    torch.save({"weight": torch.zeros(2)}, bad)
    out = tmp_path / "o"
    assert ssa.cli.main(["convert", str(bad), "--out", str(out), "--config", str(config_json)]) == 2
    assert "not of the official SSA network" in caplog.text
    assert not (tmp_path / "o").exists()


def test_finetune_continues_from_the_official_checkpoint(tmp_path):
    # Loading the authors' checkpoint and training on: the converted network trains with the official
    # recipe's losses (L_v on the last frame-decoder layers), the frozen CLIP stays bit-identical, the
    # trainable tensors move, and the result saves and reloads.
    from ssa.data.synthetic import write_split
    from ssa.train import finetune

    data = write_split(tmp_path / "split", num_videos=2, seed=3, num_frames=6, height=64, width=64,
                       progress=False)
    model = convert_official(CHECKPOINT, tiny_official_config())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    trained = finetune(model, data, output_dir=tmp_path / "run", iterations=2, batch_size=1,
                       num_frames=3, scales=[64], log_every=1, warmup_iters=1, lr=1e-3,
                       loss={"num_points": 256}, progress=False)
    after = trained.state_dict()
    frozen = [k for k in before if k.startswith("backbone.")]
    moved = [k for k in before if not k.startswith("backbone.") and not torch.equal(before[k], after[k])]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(k.startswith("frame_decoder.") for k in moved)
    assert any(k.startswith("adapters.") for k in moved)
    assert any(k.startswith("video_decoder.") for k in moved)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    assert _same_state(SSAModel.from_pretrained(tmp_path / "run" / "model"), trained)
