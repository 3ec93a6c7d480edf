"""Model adapters: per-family knowledge of frames and token layout, chosen by model class.

>>> from tttgraph.adapters import register_adapter, get_adapter
>>> register_adapter("mydit", MyDiTAdapter())    # a ModelAdapter subclass
>>> get_adapter(model).layout(model, inputs)

The built-in adapters cover CogVideoX (1.0 and 1.5), Wan 2.1, HunyuanVideo (and 1.5), Mochi, LTX-Video,
Latte, Allegro, Kandinsky 5, 6 and 6 SR, Cosmos, Sana-Video, AnyFlow-FAR, JoyImage Edit Plus,
HunyuanVideo-Framepack, Helios, MiniMax-H3, Wan-Animate 2, SANA-WM and its LTX-2 refiner; a model no adapter
claims gets :class:`GenericAdapter`, which infers the layout from the attention shapes or says which adapter to write.
"""

from __future__ import annotations

import torch

from tttgraph.adapters.allegro import AllegroAdapter
from tttgraph.adapters.anyflow import AnyFlowFARAdapter
from tttgraph.adapters.base import ModelAdapter, TokenLayout
from tttgraph.adapters.cogvideox import CogVideoXAdapter
from tttgraph.adapters.cosmos import CosmosAdapter
from tttgraph.adapters.generic import GenericAdapter
from tttgraph.adapters.history import FramepackAdapter, HeliosAdapter
from tttgraph.adapters.hunyuanvideo import HunyuanVideoAdapter
from tttgraph.adapters.hunyuanvideo15 import HunyuanVideo15Adapter
from tttgraph.adapters.joyimage import JoyImageEditPlusAdapter
from tttgraph.adapters.kandinsky import Kandinsky6SRAdapter, KandinskyAdapter
from tttgraph.adapters.latte import LatteAdapter
from tttgraph.adapters.ltx import LTXVideoAdapter
from tttgraph.adapters.minimax import MiniMaxH3Adapter
from tttgraph.adapters.mochi import MochiAdapter
from tttgraph.adapters.sana import SanaVideoAdapter
from tttgraph.adapters.sana_wm import SanaWMAdapter
from tttgraph.adapters.sana_wm_refiner import SanaWMRefinerAdapter
from tttgraph.adapters.temporal import TemporalAdapter
from tttgraph.adapters.wan import WanAdapter
from tttgraph.adapters.wan_animate2 import WanAnimate2Adapter
from tttgraph.errors import TTTGraphError

__all__ = [
    "ADAPTERS", "GenericAdapter", "ModelAdapter", "TokenLayout", "get_adapter", "register_adapter",
]

ADAPTERS: dict[str, ModelAdapter] = {}


def register_adapter(name: str, adapter: ModelAdapter, *, overwrite: bool = False) -> ModelAdapter:
    """Register ``adapter`` under ``name``; later registrations win when several match a model."""
    if not isinstance(adapter, ModelAdapter):
        raise TTTGraphError(
            f"register_adapter({name!r}, ...) needs a tttgraph.adapters.ModelAdapter instance, got "
            f"{type(adapter).__name__}; subclass ModelAdapter and pass an instance"
        )
    if name in ADAPTERS and not overwrite:
        raise TTTGraphError(
            f"an adapter named {name!r} is already registered ({type(ADAPTERS[name]).__name__}); "
            f"pick another name or pass overwrite=True"
        )
    ADAPTERS[name] = adapter
    return adapter


def get_adapter(model: torch.nn.Module) -> ModelAdapter:
    """The most recently registered adapter matching ``model``, else :class:`GenericAdapter`."""
    for adapter in reversed(ADAPTERS.values()):
        if adapter.matches(model):
            return adapter
    return GenericAdapter()


for _adapter in (
    CogVideoXAdapter(), WanAdapter(), HunyuanVideoAdapter(), HunyuanVideo15Adapter(), MochiAdapter(),
    LTXVideoAdapter(), LatteAdapter(), AllegroAdapter(), TemporalAdapter(), KandinskyAdapter(),
    CosmosAdapter(), SanaVideoAdapter(), AnyFlowFARAdapter(), Kandinsky6SRAdapter(), JoyImageEditPlusAdapter(),
    FramepackAdapter(), HeliosAdapter(), MiniMaxH3Adapter(), WanAnimate2Adapter(), SanaWMAdapter(),
    SanaWMRefinerAdapter(),
):
    register_adapter(_adapter.name, _adapter)
