"""tttgraph.transform / inspect on tiny diffusers models of every supported family."""

from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("diffusers")

from tttgraph.config import TTTConfig  # noqa: E402
from tttgraph.errors import NoAttentionFoundError, TTTGraphError  # noqa: E402
from tttgraph.models import build_tiny, example_inputs  # noqa: E402
from tttgraph.rewrite import TargetNotFoundError, inspect, plan_of, transform  # noqa: E402

# Tiny configs: 4x4 tokens per frame, text 8 tokens. order: where the text sits in joint attention.
FAMILIES = {
    "cogvideox": dict(order="text_first", frames=5, seg=2),
    "cogvideox1.5": dict(order="text_first", frames=8, seg=4, patch_t=2),  # 2 latent frames per token frame
    "wan2.1": dict(order="video_only", frames=5, seg=2),
    "hunyuanvideo": dict(order="video_first", frames=5, seg=2),
    "ltx-video": dict(order="video_only", frames=5, seg=2),
    "allegro": dict(order="video_only", frames=5, seg=2),
    "mochi": dict(order="video_first", frames=5, seg=2),  # attends over the valid text (all of it here)
    "latte": dict(order="video_only", frames=4, seg=2),  # frames (spatial) or patches (temporal) in the batch
}
TPF, TEXT = 16, 8


def _setup(family, frames=None, seed=0, text=TEXT):
    model = build_tiny(family, seed=seed)
    inputs = example_inputs(model, frames or FAMILIES[family]["frames"], text_tokens=text, seed=seed)
    return model, inputs


def _out(model, inputs):
    return model(**inputs, return_dict=False)[0]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_gates_at_zero_without_segments_reproduce_the_model(family):
    model, inputs = _setup(family)
    tm = transform(copy.deepcopy(model), TTTConfig(gate_init=0.0, mini_batch_size=16), inputs, progress=False)
    assert len(plan_of(tm).ttt_modules) >= 1
    with torch.no_grad():
        diff = (_out(tm, inputs) - _out(model, inputs)).abs().max().item()
    assert diff <= 1e-6


@pytest.mark.parametrize("family", ["cogvideox", "wan2.1", "hunyuanvideo"])
def test_backward_reaches_every_new_parameter_and_keeps_pretrained_names(family):
    model, inputs = _setup(family)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tm = transform(copy.deepcopy(model), TTTConfig(mini_batch_size=16), inputs, progress=False).train()
    names = dict(tm.named_parameters())
    assert set(before) <= set(names)
    new = {n: p for n, p in names.items() if n not in before}
    assert new and all(".gated_ttt." in n for n in new)
    per_layer = 22 if family != "wan2.1" else 20  # tensors of one bidirectional layer (Wan: no text gates)
    assert len(new) == per_layer * len(plan_of(tm).ttt_modules)
    _out(tm, inputs).square().mean().backward()
    for n, p in new.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        # The last block's text outputs are discarded by these models, so its text gates get exact
        # zeros; every other tensor must be trained.
        assert p.grad.abs().sum() > 0 or n.endswith("gate_text"), n
    text_gates = [p for n, p in new.items() if n.endswith("gate_text")]
    assert not text_gates or any(p.grad.abs().sum() > 0 for p in text_gates)
    for n, p in before.items():
        assert torch.equal(names[n].detach(), p), n


# ---------------------------------------------------------------------------------------------
# Segment-local attention, checked against the original eager model whose SDPA calls are swapped
# for a per-segment loop written here (independent of tttgraph's gathers and index tensors).
# ---------------------------------------------------------------------------------------------


def _windows(frames, s, o):
    n = max(1, math.ceil((frames - o) / s))
    return [(i * s, min(i * s + s + o, frames)) for i in range(n)]


def _looped(q, k, v, attn_mask, groups, nq):
    """Attend within each (query rows, key rows) group; average rows that several groups hold."""
    out, hits = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=q.dtype), torch.zeros(nq)
    mask = None if attn_mask is None else attn_mask.expand(q.shape[0], q.shape[1], nq, k.shape[2])
    for rows, cols in groups:
        rows, cols = torch.tensor(rows), torch.tensor(cols)
        m = None if mask is None else mask[:, :, rows][:, :, :, cols]
        out[:, :, rows] += F.scaled_dot_product_attention(q[:, :, rows], k[:, :, cols], v[:, :, cols], attn_mask=m)
        hits[rows] += 1
    return out / hits[:, None]


@contextlib.contextmanager
def segment_local_sdpa(frames, s, o, order, text_tokens_per_segment, global_video=False):
    """F.scaled_dot_product_attention made segment-local; ``global_video``: each segment's self-attention
    keys are its text chunk and every frame (TTTConfig.attention_scope="video")."""
    original = F.scaled_dot_product_attention
    windows = _windows(frames, s, o)
    lt, nv = text_tokens_per_segment, frames * TPF
    nt = lt * len(windows)
    joint = order != "video_only"
    text_at, video_at = {"text_first": (0, nt), "video_first": (nv, 0)}.get(order, (0, 0))

    def video(i):
        a, b = windows[i]
        return list(range(video_at + a * TPF, video_at + b * TPF))

    def text(i):
        return list(range(text_at + i * lt, text_at + (i + 1) * lt))

    def patched(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        q, k, v = query, key, value
        nq, nk = q.shape[2], k.shape[2]
        every_frame = list(range(video_at, video_at + nv))
        if joint and nq == nk == nt + nv:
            groups = [(text(i) + video(i), text(i) + (every_frame if global_video else video(i)))
                      for i in range(len(windows))]
        elif nq == nk == nv:
            groups = [(video(i), every_frame if global_video else video(i)) for i in range(len(windows))]
        elif nq == nv and nk == nt:
            groups = [([r - video_at for r in video(i)], [c - text_at for c in text(i)]) for i in range(len(windows))]
        elif nq == nk == frames:  # attention over time, one patch at a time (Latte's temporal blocks)
            groups = [(list(range(a, b)),) * 2 for a, b in windows]
        elif nq == nk == nt:
            groups = [([c - text_at for c in text(i)],) * 2 for i in range(len(windows))]
        else:
            return original(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale)
        assert scale is None and not is_causal
        return _looped(q, k, v, attn_mask, groups, nq)

    F.scaled_dot_product_attention = patched
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


@pytest.mark.parametrize("family", list(FAMILIES))
def test_segments_match_an_eager_per_segment_reference(family):
    spec = FAMILIES[family]
    pt = spec.get("patch_t", 1)  # the reference counts token frames (latent frames / temporal patch)
    model, inputs = _setup(family)
    cfg = TTTConfig(gate_init=0.0, mini_batch_size=16, segment_latent_frames=spec["seg"], segment_overlap_frames=pt)
    tm = transform(copy.deepcopy(model), cfg, inputs, progress=False)
    plan = plan_of(tm)
    assert sum(s.segment for s in plan.sites) >= 2
    with torch.no_grad():
        got = _out(tm, inputs)
        plain = _out(model, inputs)
        with segment_local_sdpa(spec["frames"] // pt, spec["seg"] // pt, 1, spec["order"], TEXT // 2), \
                _relative_temporal_table(model, spec["frames"], spec["seg"]):
            expected = _out(model, inputs)
    assert (expected - plain).abs().max() > 1e-3  # the reference really is local
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["cogvideox", "hunyuanvideo", "wan2.1"])
def test_video_scope_matches_an_eager_reference_where_each_segment_reads_every_frame(family):
    spec = FAMILIES[family]
    model, inputs = _setup(family)
    cfg = TTTConfig(gate_init=0.0, mini_batch_size=16, segment_latent_frames=spec["seg"], segment_overlap_frames=1,
                    attention_scope="video")
    tm = transform(copy.deepcopy(model), cfg, inputs, progress=False)
    assert "every frame" in str(plan_of(tm))
    with torch.no_grad():
        got = _out(tm, inputs)
        with segment_local_sdpa(spec["frames"], spec["seg"], 1, spec["order"], TEXT // 2):
            local = _out(model, inputs)
        with segment_local_sdpa(spec["frames"], spec["seg"], 1, spec["order"], TEXT // 2, global_video=True):
            expected = _out(model, inputs)
    assert (expected - local).abs().max() > 1e-3  # the reference really reads other segments' frames
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_video_scope_needs_segments_and_refuses_context_parallelism():
    from tttgraph.config import ConfigError
    from tttgraph.layout import SequenceLayout
    from tttgraph.parallel.context import ContextError, plan_shard

    with pytest.raises(ConfigError, match="segment_latent_frames"):
        TTTConfig(attention_scope="video")
    with pytest.raises(ConfigError, match="attention_scope must be one of"):
        TTTConfig(segment_latent_frames=2, attention_scope="global")
    with pytest.raises(ContextError, match='attention_scope="segment"'):
        plan_shard(SequenceLayout(4, 16, 2, global_video=True), 8, 2)
    cfg = TTTConfig(segment_latent_frames=2, attention_scope="video")
    assert TTTConfig.from_json(cfg.to_json()) == cfg


@contextlib.contextmanager
def _relative_temporal_table(model, frames, seg):
    """Latte's frame table indexed by each frame's place in its window (what tttgraph/positions.py does)."""
    table = getattr(model, "temp_pos_embed", None)
    if table is None:
        yield
        return
    windows, positions = _windows(frames, seg, 1), []
    for i, (start, _) in enumerate(windows):
        stop = (i + 1) * seg if i < len(windows) - 1 else frames
        positions += [f - start for f in range(i * seg, stop)]
    model.register_buffer("temp_pos_embed", table[:, positions], persistent=False)
    try:
        yield
    finally:
        model.register_buffer("temp_pos_embed", table, persistent=False)


def _frame_outputs(out, family):
    """[B, F, ...] view of the model output (diffusers returns [B, F, C, H, W] or [B, C, F, H, W])."""
    return out if family.startswith("cogvideox") else out.transpose(1, 2)


# Families whose only path between frames is attention. HunyuanVideo and Mochi also pool the whole
# text into a global conditioning vector, and Latte's per-frame cross-attention reads all the text,
# so there the first segment sees the last one's text whatever the attention does.
@pytest.mark.parametrize("family", ["cogvideox", "wan2.1", "allegro"])
def test_first_segment_is_blind_to_the_last_without_ttt_and_sees_it_with_ttt(family):
    spec = FAMILIES[family]
    model, inputs = _setup(family, text=9)  # 3 chunks of 3 for 3 segments
    changed = dict(inputs)
    text = inputs["encoder_hidden_states"].clone()
    text[:, -3:] += 1.0  # the last segment's text chunk (5 frames in segments of 2: 3 chunks)
    video = inputs["hidden_states"].clone()
    frame_dim = 1 if family.startswith("cogvideox") else 2
    video.narrow(frame_dim, spec["frames"] - 1, 1).add_(1.0)  # the last frame, only in the last window
    changed.update(encoder_hidden_states=text, hidden_states=video)
    # No overlap: a shared frame would carry the change into the first window one block later.
    own = slice(0, spec["seg"])
    for gate, should_change in ((0.0, False), (0.5, True)):
        cfg = TTTConfig(gate_init=gate, mini_batch_size=16, segment_latent_frames=spec["seg"])
        tm = transform(copy.deepcopy(model), cfg, inputs, progress=False)
        with torch.no_grad():
            a = _frame_outputs(_out(tm, inputs), family)[:, own]
            b = _frame_outputs(_out(tm, changed), family)[:, own]
        assert (not torch.equal(a, b)) == should_change, f"gate {gate}"


@pytest.mark.parametrize("family", ["cogvideox", "wan2.1"])
def test_runs_at_a_longer_frame_count_than_captured(family):
    spec = FAMILIES[family]
    model, inputs = _setup(family)
    cfg = TTTConfig(gate_init=0.0, mini_batch_size=16, segment_latent_frames=spec["seg"], segment_overlap_frames=1)
    tm = transform(copy.deepcopy(model), cfg, inputs, progress=False)
    frames = spec["frames"] + 4  # 2 more segments, 2 more text chunks
    longer = example_inputs(model, frames, text_tokens=(TEXT // 2) * len(_windows(frames, spec["seg"], 1)), seed=3)
    with torch.no_grad():
        got = _out(tm, longer)
        with segment_local_sdpa(frames, spec["seg"], 1, spec["order"], TEXT // 2):
            expected = _out(model, longer)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_cross_attention_gets_no_ttt_unless_targeted():
    model, inputs = _setup("wan2.1")
    plan = inspect(model, TTTConfig(), inputs)
    cross = [s for s in plan.sites if s.kind == "cross"]
    assert cross and not any(s.ttt for s in cross)
    assert all(s.ttt for s in plan.sites if s.kind == "video")
    targeted = inspect(model, TTTConfig(targets=["blocks.*.attn2"]), inputs)
    assert [s.module_path for s in targeted.sites if s.ttt] == ["blocks.0.attn2", "blocks.1.attn2"]
    only_first = inspect(model, TTTConfig(exclude=["blocks.1.*"]), inputs)
    assert [s.module_path for s in only_first.sites if s.ttt] == ["blocks.0.attn1"]


def test_inspect_changes_nothing_and_describes_the_plan():
    model, inputs = _setup("cogvideox")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modules = [n for n, _ in model.named_modules()]
    plan = inspect(model, TTTConfig(segment_latent_frames=2, segment_overlap_frames=1), inputs)
    assert [n for n, _ in model.named_modules()] == modules
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    text = str(plan)
    assert "transformer_blocks.0.attn1" in text and "TTT layers: 2" in text and "4 text tokens each" in text
    assert plan.added_parameters == 2 * 8802


def test_errors_name_what_was_searched():
    model, inputs = _setup("wan2.1")
    with pytest.raises(TargetNotFoundError, match=r"'blocks\.\*\.attn9' matches no attention module.*blocks.0.attn1"):
        inspect(model, TTTConfig(targets=["blocks.*.attn9"]), inputs)
    with pytest.raises(NoAttentionFoundError, match=r"blocks.0.attn1 \(video/thw: not selected"):
        inspect(model, TTTConfig(exclude=["**"]), inputs)
    latte = build_tiny("latte")
    plan = inspect(latte, TTTConfig(segment_latent_frames=2, segment_overlap_frames=1), example_inputs(latte))
    assert [s.axes for s in plan.sites if s.ttt] == ["hw", "t", "hw", "t"]
    assert [s.axes for s in plan.sites if s.segment] == ["t", "t"]
    assert all("per-frame cross-attention: not segmented" in s.note for s in plan.sites if s.kind == "cross")
    with pytest.raises(TTTGraphError, match="don't split into 2 segments"):
        inspect(model, TTTConfig(segment_latent_frames=2, segment_overlap_frames=1),
                example_inputs(model, 5, text_tokens=7))


def test_graph_insertion_matches_the_hand_written_eager_insertion():
    """The pass puts the TTT where tests/eager_reference.py does by wrapping attn1: after to_out, before the gate."""
    from tests.eager_reference import add_ttt_to_cogvideox

    model, inputs = _setup("cogvideox")
    tm = transform(copy.deepcopy(model), TTTConfig(gate_init=0.3, mini_batch_size=16), inputs, progress=False)
    eager = build_tiny("cogvideox")
    add_ttt_to_cogvideox(eager, latent_size=(8, 8), text_tokens_per_segment=TEXT, mini_batch_size=16, gate_init=0.3)
    state = {n.replace(".gated_ttt.", ".ttt."): p for n, p in tm.state_dict().items() if ".gated_ttt." in n}
    missing, unexpected = eager.load_state_dict(state, strict=False)
    assert not unexpected and all(".ttt." not in n for n in missing)
    with torch.no_grad():
        got, expected = _out(tm, inputs), _out(eager, inputs)
    assert (got - _out(model, inputs)).abs().max() > 1e-4  # the TTT layers act
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_latte_runs_longer_than_its_position_table_with_segment_relative_positions():
    from tttgraph.layout import SequenceLayout
    from tttgraph.positions import relative_frame_positions

    model = build_tiny("latte")  # temp_pos_embed has video_length = 4 rows
    frames = 8
    inputs = example_inputs(model, frames, text_tokens=TEXT)
    with pytest.raises(TTTGraphError, match=r"temp_pos_embed holds positions for 4 frames, the inputs have 8"):
        inspect(model, TTTConfig(), inputs)
    cfg = TTTConfig(gate_init=0.0, mini_batch_size=16, segment_latent_frames=2, segment_overlap_frames=1)
    table = model.temp_pos_embed
    tm = transform(copy.deepcopy(model), cfg, inputs, progress=False)
    assert model.temp_pos_embed is table  # the user's model is left as it was
    # Reference: the eager model with the table indexed by each frame's place in its segment, and
    # temporal attention cut into the same windows.
    positions = relative_frame_positions(SequenceLayout(0, 1, 2, 1), frames)
    assert positions == [0, 1, 0, 1, 0, 1, 0, 1]
    model.register_buffer("temp_pos_embed", table[:, positions], persistent=False)
    try:
        with torch.no_grad(), segment_local_sdpa(frames, 2, 1, "video_only", TEXT // 4):
            expected = _out(model, inputs)
    finally:
        model.register_buffer("temp_pos_embed", table, persistent=False)
    with torch.no_grad():
        torch.testing.assert_close(_out(tm, inputs), expected, rtol=1e-5, atol=1e-5)


def test_filter_fn_sees_the_attention_module_and_acts_like_exclude():
    model, inputs = _setup("wan2.1")
    seen = []

    def only_first_block(path, module):
        seen.append(type(module).__name__)
        return path.startswith("blocks.0.")

    plan = inspect(model, TTTConfig(filter_fn=only_first_block, segment_latent_frames=2, segment_overlap_frames=1),
                   inputs)
    assert "WanAttention" in seen
    assert [s.module_path for s in plan.sites if s.ttt] == ["blocks.0.attn1"]
    assert [s.module_path for s in plan.sites if s.segment] == ["blocks.0.attn1", "blocks.0.attn2"]


@pytest.mark.parametrize("family", ["cogvideox", "wan2.1"])
def test_transformed_model_trains_under_bf16_autocast(family):
    """Mixed precision (the fine-tuning recipe's bf16 autocast): SDPA in the segments and the TTT
    projections give bf16 while LayerNorms stay float32; forward and backward must still run."""
    model = build_tiny(family)
    frames = 5
    inputs = example_inputs(model, frames, text_tokens=8)
    cfg = TTTConfig(segment_latent_frames=2, segment_overlap_frames=1, mini_batch_size=16, text_tokens_per_segment=4)
    tm = transform(copy.deepcopy(model), cfg, inputs, progress=False).train()
    ref = tm(**inputs, return_dict=False)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tm(**inputs, return_dict=False)[0]
        out.float().square().mean().backward()
    assert out.dtype == torch.bfloat16
    assert ((out.float() - ref).norm() / ref.norm()).item() < 3e-2
    new = [p for n, p in tm.named_parameters() if ".gated_ttt." in n]
    assert new and all(p.grad is not None and torch.isfinite(p.grad).all() for p in new)


def _mochi_padded(model, frames, chunks, chunk, valid, seed=0):
    """Mochi inputs of batch 2 with ``chunks`` text chunks of ``chunk`` tokens; sample b keeps the first
    ``valid[b]`` tokens of each chunk (the pipeline pads each prompt at its end)."""
    inputs = example_inputs(model, frames, text_tokens=chunk * chunks, batch_size=2, seed=seed)
    mask = torch.ones(2, chunks, chunk, dtype=inputs["encoder_attention_mask"].dtype)
    for b, v in enumerate(valid):
        mask[b, :, v:] = 0
    inputs["encoder_attention_mask"] = mask.flatten(1)
    return inputs


def test_mochi_with_padding_masks_reproduces_the_model_and_segments_at_two_frame_counts():
    model = build_tiny("mochi")
    # One prompt per sample, padded at its end: the untouched model is the reference. Padding inside the
    # text (a storyboard's chunks) is only defined for the edited model: Mochi's own processor moves the
    # valid text outputs to the front there, the edited one keeps them in place.
    example = _mochi_padded(model, 4, 1, 8, valid=(6, 4))
    with torch.no_grad():
        ref = _out(model, example)
    tm = transform(copy.deepcopy(model), TTTConfig(gate_init=0.0, mini_batch_size=16), example, progress=False)
    with torch.no_grad():
        assert (_out(tm, example) - ref).abs().max() <= 1e-6  # per-sample valid lengths 6 and 4 of 8
    cfg = TTTConfig(gate_init=0.0, mini_batch_size=16, segment_latent_frames=2, segment_overlap_frames=0)
    seg = transform(copy.deepcopy(model), cfg, _mochi_padded(model, 4, 2, 4, valid=(3, 2)), progress=False)
    for frames in (4, 6):
        inputs = _mochi_padded(model, frames, frames // 2, 4, valid=(3, 2), seed=frames)
        junk = {**inputs, "encoder_hidden_states": inputs["encoder_hidden_states"].clone()}
        junk["encoder_hidden_states"][inputs["encoder_attention_mask"] == 0] += 5.0  # only padded tokens
        late = {**inputs, "hidden_states": inputs["hidden_states"].clone()}
        late["hidden_states"][:, :, -2:] += 1.0  # the last segment's frames
        with torch.no_grad():
            out, out_junk, out_late = _out(seg, inputs), _out(seg, junk), _out(seg, late)
        assert out.shape == inputs["hidden_states"].shape
        assert torch.equal(out, out_junk)  # padded text tokens are never read
        assert torch.equal(out[:, :, :2], out_late[:, :, :2]) and not torch.equal(out, out_late)
