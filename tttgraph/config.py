"""``TTTConfig``: what ``tttgraph.transform`` does to a model, as a frozen, versioned value.

It round-trips through JSON (``to_json`` / ``from_json``), which is how ``tttgraph.save`` records
the recipe that ``tttgraph.restore`` re-applies. Unknown keys, wrong types and out-of-range values
are refused with the name of the field and the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tttgraph.errors import TTTGraphError
from tttgraph.kernels.ttt_mlp.backends import parse_backend

CONFIG_VERSION = 1
ATTENTION_SCOPES = ("segment", "video")


class ConfigError(TTTGraphError):
    """A TTTConfig field or a saved recipe is invalid."""


@dataclass(frozen=True)
class TTTConfig:
    """How to rewrite a video DiT into the one-minute-video architecture.

    Attributes:
        targets: module-path patterns of the attention modules that get a TTT layer: shell globs
            (``"transformer_blocks.*.attn1"``, ``**`` spans dots) or regexes prefixed with ``re:``.
            Empty (default): every self-attention over video tokens. Cross-attention (text keys
            only) gets none unless a pattern names it.
        exclude: patterns of attention modules left exactly as they are: no TTT layer and no
            segmentation. (With segments on, every other attention over frames is made
            segment-local, targeted or not, so that no attention spans segments.)
        filter_fn: optional ``fn(module_path, module) -> bool``; False acts like ``exclude``.
            Not serialisable: a config with one can't be saved.
        segment_latent_frames: S, latent frames per attention segment; None = no segmentation
            (attention stays global). The reference uses 12 (3 s of video).
        segment_overlap_frames: O, latent frames shared by neighbouring segments (reference: 1).
        attention_scope: what a segment's attention reads. ``"segment"`` (the paper): its own text
            chunk and its own frames. ``"video"``: its own text chunk and every frame of the video,
            i.e. global attention over the video that still keeps each paragraph with its segment.
            That is the full-attention upper bound of a long-video experiment: with segmentation off,
            a joint attention can't tell whose paragraph a text token is (text tokens carry no
            position), so every frame reads every paragraph alike. Needs ``segment_latent_frames``.
        text_tokens_per_segment: text tokens per segment; None = the model's text length divided
            evenly among the segments of the example inputs.
        mini_batch_size: TTT inner mini-batch (tokens per gradient step).
        base_lr: inner learning-rate scale.
        mlp_expansion: inner MLP hidden size / head dim.
        gate_init: initial value of the TTT gates (tanh applied on use); 0 makes the new layers the
            identity at the start.
        bidirectional: add the reverse-direction TTT pass.
        rope: 3D RoPE on the TTT layer's q and k of video tokens.
        eps: LayerNorm epsilon of the inner model (inside the square root).
        backend: ``tttgraph::ttt_mlp`` backend: "auto", "reference", "triton", "cuda_sm90".
        version: format version of the serialised config.
    """

    targets: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    filter_fn: Callable[[str, Any], bool] | None = field(default=None, compare=False)
    segment_latent_frames: int | None = None
    segment_overlap_frames: int = 0
    attention_scope: str = "segment"
    text_tokens_per_segment: int | None = None
    mini_batch_size: int = 64
    base_lr: float = 0.1
    mlp_expansion: int = 4
    gate_init: float = 0.1
    bidirectional: bool = True
    rope: bool = True
    eps: float = 1e-6
    backend: str = "auto"
    version: int = CONFIG_VERSION

    def __post_init__(self):
        for name in ("targets", "exclude"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ConfigError(f"{name} must be a list of patterns, got the string {value!r}; write [{value!r}]")
            object.__setattr__(self, name, tuple(value))
            for pattern in getattr(self, name):
                _compile(pattern, name)
        _check_int(self, "mini_batch_size", 1)
        _check_int(self, "mlp_expansion", 1)
        _check_int(self, "segment_overlap_frames", 0)
        if self.segment_latent_frames is not None:
            _check_int(self, "segment_latent_frames", 1)
        elif self.segment_overlap_frames:
            raise ConfigError("segment_overlap_frames needs segment_latent_frames (segmentation is off)")
        if self.attention_scope not in ATTENTION_SCOPES:
            raise ConfigError(f"attention_scope must be one of {ATTENTION_SCOPES}, got {self.attention_scope!r}")
        if self.attention_scope == "video" and self.segment_latent_frames is None:
            raise ConfigError('attention_scope="video" keeps each paragraph with its segment, so it needs segments: '
                              "set segment_latent_frames (e.g. 12)")
        if self.text_tokens_per_segment is not None:
            _check_int(self, "text_tokens_per_segment", 0)
        for name in ("base_lr", "eps"):
            if not isinstance(getattr(self, name), (int, float)) or not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be a number > 0, got {getattr(self, name)!r}")
        if not isinstance(self.gate_init, (int, float)):
            raise ConfigError(f"gate_init must be a number, got {self.gate_init!r}")
        parse_backend(self.backend)
        if self.version != CONFIG_VERSION:
            raise ConfigError(
                f"config version {self.version} is not supported by this tttgraph (which writes version "
                f"{CONFIG_VERSION}); upgrade tttgraph or re-create the config"
            )

    # ------------------------------------------------------------------ matching

    def excludes(self, module_path: str, module: Any = None) -> bool:
        """Whether ``exclude`` (or ``filter_fn``) keeps the attention at ``module_path`` as it is."""
        if any(_compile(p).fullmatch(module_path) for p in self.exclude):
            return True
        return self.filter_fn is not None and not self.filter_fn(module_path, module)

    def selects(self, module_path: str, module: Any = None, *, cross_attention: bool = False) -> bool:
        """Whether the attention at ``module_path`` gets a TTT layer under this config."""
        if self.excludes(module_path, module):
            return False
        if self.targets:
            return any(_compile(p).fullmatch(module_path) for p in self.targets)
        return not cross_attention

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        if self.filter_fn is not None:
            raise ConfigError(
                "a config with filter_fn can't be serialised (it is code); express the selection with "
                "targets/exclude patterns to save it"
            )
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "filter_fn"}
        out["targets"], out["exclude"] = list(self.targets), list(self.exclude)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TTTConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"a TTTConfig must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)} - {"filter_fn"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown TTTConfig key(s) {unknown}; valid keys are {sorted(known)}")
        types = {"targets": list, "exclude": list, "bidirectional": bool, "rope": bool, "backend": str,
                 "attention_scope": str}
        for key, typ in types.items():
            if key in data and not isinstance(data[key], typ):
                raise ConfigError(f"TTTConfig.{key} must be a {typ.__name__}, got {data[key]!r}")
        return cls(**data)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TTTConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"not valid JSON for a TTTConfig: {err}") from None
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike) -> None:
        write_atomic(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> TTTConfig:
        """Read a config written by :meth:`save` (a damaged file raises :class:`ConfigError` naming it)."""
        from tttgraph.safe_read import read_json

        data = read_json(path, "TTT config", "write it again with TTTConfig.save (or fix the JSON by hand)",
                         error=ConfigError)
        try:
            return cls.from_dict(data)
        except ConfigError as err:
            raise ConfigError(f"TTT config {path}: {err}") from None

    def replace(self, **changes) -> TTTConfig:
        return dataclasses.replace(self, **changes)


def _check_int(cfg: TTTConfig, name: str, minimum: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an int >= {minimum}, got {value!r}")


_PATTERN_CACHE: dict[str, re.Pattern] = {}


def _compile(pattern: str, field_name: str = "targets") -> re.Pattern:
    """``re:...`` is a regex; anything else a shell glob over the dotted module path."""
    if pattern not in _PATTERN_CACHE:
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"{field_name} patterns must be non-empty strings, got {pattern!r}")
        if pattern.startswith("re:"):
            try:
                _PATTERN_CACHE[pattern] = re.compile(pattern[3:])
            except re.error as err:
                raise ConfigError(f"{field_name} pattern {pattern!r} is not a valid regex: {err}") from None
        else:
            _PATTERN_CACHE[pattern] = re.compile(_glob_to_regex(pattern))
    return _PATTERN_CACHE[pattern]


def _glob_to_regex(glob: str) -> str:
    """Glob over dotted paths: ``*`` matches within one path component, ``**`` across components."""
    out = []
    i = 0
    while i < len(glob):
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^.]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^.]")
            i += 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return "".join(out)


def file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 minus the process umask."""
    return 0o666 & ~_umask()


def _umask() -> int:
    # Linux shows the umask in /proc; reading it there avoids os.umask's set-and-restore, during which
    # another thread's new file would get umask 0.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ".tmp", mode: int | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that needs a file name (safetensors, ffmpeg,
    torch.export): renamed onto ``path`` when the block succeeds, deleted otherwise, so readers see
    the old file or the new one, never a torn one. ``suffix``: the temporary name's ending (a
    writer may choose its format from it); ``mode``: permissions set before the rename (default
    :func:`file_mode`, what ``open()`` would give; safetensors and mkstemp create files 0o600).

    The temporary file sits in a fresh hidden directory ``.<name>.XXXX.tmp/`` beside ``path``, so
    that a writer's own temporaries (safetensors writes one, then renames it) go with it: a write
    killed midway leaves that one directory, which :func:`clear_stale` removes."""
    path = Path(path)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp = staging / f"{path.stem}{suffix}"
    try:
        tmp.touch()
        yield tmp
        os.chmod(tmp, file_mode() if mode is None else mode)
        _fsync(tmp)  # the data on disk before the rename makes it visible (a crash can't expose an empty file)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def clear_stale(path: str | os.PathLike) -> None:
    """Remove what writes of ``path`` killed midway left beside it: the ``.<name>.XXXX.tmp`` files
    of :func:`write_atomic` and directories of :func:`atomic_path`. Only for a writer that knows no
    other process is writing ``path`` at the same time."""
    path = Path(path)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _fsync(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write a file so that readers see the old content or the new, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, file_mode())  # mkstemp's 0o600 would make every saved file private
        with os.fdopen(fd, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
