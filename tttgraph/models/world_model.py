"""The world base model: a small CogVideoX trained on 3 s clips of the world (issue #21, part 3).

It stands in for a pretrained video DiT: trained on single 3-second segments of
:mod:`tttgraph.data.world` only, it renders the characters a paragraph introduces (colour, shape,
size, slot, action) on the paragraph's background. It has never seen a story longer than one
segment, nor a paragraph that names a character without describing it: carrying a character's
looks across segments is what the TTT layers must learn in the staged fine-tune.

The parts (a :class:`~tttgraph.models.cogvideox_bundle.CogVideoXBundle`, ``source="world"``):

- **transformer**: diffusers ``CogVideoXTransformer3DModel`` (CogVideoX 1.0 architecture: joint
  text-video attention, 3D RoPE, adaptive LayerNorm), 6 blocks of width 128 (4 heads of 32);
- **autoencoder**: :class:`~tttgraph.models.pixel_autoencoder.PixelAutoencoder`, a fixed reshape
  of pixels (4x4 pixel blocks as 48 channels, every 4th frame): the model diffuses pixels of the
  32x48 world directly (an 8 x 12 grid of tokens per latent frame), so nothing can blur the
  attributes the scorer reads and no VAE needs training;
- **text encoder**: a 2-layer T5 encoder of width 64 over the word-level tokenizer of
  :func:`~tttgraph.models.cogvideox_bundle.tiny_tokenizer`, trained jointly with the transformer
  (a frozen random encoder would leave the transformer to bind words to attributes through
  random features; trained, the pair learns it in minutes);
- **schedule**: CogVideoX's (v-prediction, zero terminal SNR).

Weights ship in the package (``tttgraph/models/world_weights/``, bfloat16 safetensors) when
:mod:`tttgraph.models.train_world` has been run and its output copied there; :func:`world_bundle`
loads them, or a directory given explicitly.

Layouts: as the CogVideoX bundle: latents ``[F, 48, 8, 12]`` per 32x48 video of ``4(F-1)+1``
frames; text ``[S, 64, 64]``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tttgraph.errors import TTTGraphError

WORLD_HEIGHT, WORLD_WIDTH = 32, 48
WORLD_TEXT_TOKENS = 64
WORLD_TRANSFORMER = dict(
    num_attention_heads=4, attention_head_dim=32, in_channels=48, out_channels=48, time_embed_dim=128,
    text_embed_dim=64, num_layers=6, sample_width=WORLD_WIDTH // 4, sample_height=WORLD_HEIGHT // 4,
    sample_frames=49, patch_size=1, max_text_seq_length=WORLD_TEXT_TOKENS, use_rotary_positional_embeddings=True,
)
WORLD_T5 = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, relative_attention_num_buckets=16,
                relative_attention_max_distance=64, dropout_rate=0.0, feed_forward_proj="gated-gelu")
# The world's mean colour in [-1, 1] and 1 / its pixel std (measured over 200 training clips).
WORLD_AUTOENCODER = dict(spatial_compression=4, temporal_compression_ratio=4, scaling_factor=1.6,
                         shift=(0.25, 0.30, 0.10), latent_channels=48, block_out_channels=(3, 3, 3))
WEIGHTS_DIR = Path(__file__).with_name("world_weights")
# Denoising steps `tttgraph generate` takes for the world model: its held-out 3 s clips score the same
# at 25 steps as at 50 (100% attribute accuracy on 40 clips, CPU), at half a 9 s video's CPU time.
DEFAULT_SAMPLER_STEPS = 25
WEIGHT_FILES = ("transformer.safetensors", "text_encoder.safetensors")


def build_world_parts(seed: int = 0):
    """Freshly initialised (transformer, autoencoder, text encoder, tokenizer), float32, CPU."""
    from diffusers import CogVideoXTransformer3DModel

    from tttgraph.models.cogvideox_bundle import t5_encoder, tiny_tokenizer
    from tttgraph.models.pixel_autoencoder import PixelAutoencoder

    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = CogVideoXTransformer3DModel(**WORLD_TRANSFORMER)
        torch.manual_seed(seed + 1)
        text_encoder = t5_encoder(tokenizer, WORLD_T5)
    transformer._tttgraph_family = "cogvideox"
    return transformer, PixelAutoencoder(**WORLD_AUTOENCODER), text_encoder, tokenizer


def weights_available(path: str | os.PathLike | None = None) -> bool:
    """Whether ``path`` (default: the package's ``world_weights/``) holds the world base model's weights."""
    root = Path(path) if path is not None else WEIGHTS_DIR
    return all((root / name).is_file() for name in WEIGHT_FILES)


def _load_into(module: torch.nn.Module, file: Path) -> None:
    from tttgraph.safe_read import load_safetensors

    fix = "train the world base model again (python -m tttgraph.models.train_world) or reinstall tttgraph"
    state, _ = load_safetensors(file, "world base model weights", fix)
    expected = module.state_dict()
    wrong = sorted(k for k in state if k not in expected or state[k].shape != expected[k].shape)
    missing = sorted(k for k in expected if k not in state)
    if wrong or missing:
        raise TTTGraphError(f"{file} does not fit the world base model ({len(wrong)} unexpected or misshapen, "
                            f"{len(missing)} missing tensors, e.g. {(wrong + missing)[:3]}); {fix}")
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def world_bundle(weights: str | os.PathLike | None = None, *, require_weights: bool = True):
    """The world base model as a :class:`~tttgraph.models.cogvideox_bundle.CogVideoXBundle` (float32, eval, CPU).

    ``weights``: a directory with ``transformer.safetensors`` and ``text_encoder.safetensors`` (as
    :func:`save_world_weights` writes them); default the package's shipped weights. With
    ``require_weights=False`` and no weights, the parts keep their fresh initialisation (training
    starts from that).
    """
    from tttgraph.models.cogvideox_bundle import SCHEDULER_CONFIG, CogVideoXBundle

    root = Path(weights) if weights is not None else WEIGHTS_DIR
    transformer, vae, text_encoder, tokenizer = build_world_parts()
    if weights_available(root):
        _load_into(transformer, root / WEIGHT_FILES[0])
        _load_into(text_encoder, root / WEIGHT_FILES[1])
    elif require_weights:
        raise TTTGraphError(
            f"{root} has no world base model weights ({', '.join(WEIGHT_FILES)}); train them with "
            "`python -m tttgraph.models.train_world --out DIR` and pass DIR/weights"
        )
    return CogVideoXBundle(
        transformer=transformer.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer,
        scheduler_config=dict(SCHEDULER_CONFIG), text_tokens_per_segment=WORLD_TEXT_TOKENS,
        source="world" if weights is None else str(root),
    )


def save_world_weights(transformer: torch.nn.Module, text_encoder: torch.nn.Module, directory: str | os.PathLike,
                       dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write the two weight files into ``directory`` atomically (each file appears whole or not at all)."""
    from safetensors.torch import save_file

    from tttgraph.config import atomic_path

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    for module, name in ((transformer, WEIGHT_FILES[0]), (text_encoder, WEIGHT_FILES[1])):
        state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in module.state_dict().items()}
        with atomic_path(root / name) as tmp:
            save_file(state, str(tmp), metadata={"format": "tttgraph-world-base", "dtype": str(dtype)})
    return root
