"""Several storyboards denoised together (``generate_many``): each video is the one ``generate`` makes alone."""

from __future__ import annotations

import numpy as np
import pytest

from tttgraph.data.world import make_story
from tttgraph.generate.batch import generate_many
from tttgraph.generate.pipeline import GenerateError, GenerateOptions, generate, load_models, plan
from tttgraph.generate.storyboard import load_storyboard


def test_each_board_of_a_batch_gets_the_video_generate_makes_of_it_alone(tmp_path):
    """Each board's video is the one ``generate`` makes of it with its seed (up to batched arithmetic): the
    text is stacked negatives-then-paragraphs in the order the sampler splits, each board gets its own
    paragraphs, and each its own initial and step noise (diffusers' DPM step draws twice from one
    generator, which would tie the samples of a batch together)."""
    paths = []
    for i, seed in enumerate((3, 8)):
        paths.append(tmp_path / f"s{i}.json")
        paths[-1].write_text(make_story(seed, 2, "held_out").to_json())
    options = GenerateOptions(storyboard=paths[0], seconds=6, steps=3, out=tmp_path / "a.mp4", contact_sheet="",
                              checkpoint_every=0, ttt="none", backend="reference", progress=False)
    models = load_models(plan(options), options=options, out=lambda *a: None)
    from tttgraph.models.cogvideox_bundle import decode_latents

    result = generate(options, models=models, out=lambda *a: None)
    alone = decode_latents(models.bundle, result.latents[0], progress=False)
    boards = [load_storyboard(p) for p in paths]
    together = generate_many(models, boards, options, seeds=[options.seed, 7])
    assert len(together) == 2 and all(v.shape == alone.shape and v.dtype == np.uint8 for v in together)
    assert np.abs(together[0].astype(int) - alone.astype(int)).max() <= 1  # batched arithmetic: rounding
    assert np.abs(together[1].astype(int) - alone.astype(int)).mean() > 5.0  # another story, other noise
    swapped = generate_many(models, boards[::-1], options, seeds=[7, options.seed])
    assert np.abs(swapped[1].astype(int) - alone.astype(int)).max() <= 1  # the video follows the seed, not the place
    second = generate(GenerateOptions(**{**options.__dict__, "storyboard": paths[1], "seed": 7}), models=models,
                      out=lambda *a: None)
    assert np.abs(decode_latents(models.bundle, second.latents[0], progress=False).astype(int)
                  - together[1].astype(int)).max() <= 1

    with pytest.raises(GenerateError, match="storyboards make latents of 2 shapes"):
        generate_many(models, [boards[0], load_storyboard(paths[1]).first_seconds(3)],
                      GenerateOptions(**{**options.__dict__, "seconds": None}))
