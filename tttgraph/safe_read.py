"""Reading tttgraph's own files: one clear error for a damaged file, never a parser's exception.

Every file tttgraph reads (save directories, training checkpoints, precomputed clips, stage and
TTT configs, generation resume files, storyboards, pretrained configs, exported ONNX metadata)
goes through these helpers. Whatever the parser raises (safetensors' ``SafetensorError``,
``json.JSONDecodeError``, ``UnicodeDecodeError``, ``OSError``) becomes one error, a
:class:`DamagedFileError` or the caller's own subclass of :class:`~tttgraph.errors.TTTGraphError`
(``error=``), whose message is ``"<what> <path> <what is wrong>; <what to do>"``: the file, the
damage (missing, a directory, empty, truncated, not UTF-8, not JSON, a JSON list where an object
belongs, a garbage header, a missing key) and the fix the caller knows (``fix=``).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tttgraph.errors import DamagedFileError, TTTGraphError

__all__ = [
    "DamagedFileError", "check_fields", "check_file", "check_safetensors", "damaged", "json_type",
    "load_safetensors", "open_safetensors", "read_json", "read_text",
]

ErrorType = type[TTTGraphError]


def damaged(path: str | os.PathLike, problem: str, what: str, fix: str,
            error: ErrorType = DamagedFileError) -> TTTGraphError:
    """The error for ``path``: ``"<what> <path> <problem>; <fix>"``."""
    return error(f"{what} {path} {problem}; {fix}")


def check_file(path: Path, what: str, fix: str, error: ErrorType = DamagedFileError) -> None:
    """Raise unless ``path`` exists and is a file (not a directory)."""
    if path.is_dir():
        raise damaged(path, "is a directory, not a file", what, fix, error)
    if not path.exists():
        raise damaged(path, "does not exist", what, fix, error)


def _read_bytes(path: Path, what: str, fix: str, error: ErrorType) -> bytes:
    check_file(path, what, fix, error)
    try:
        return path.read_bytes()
    except OSError as err:
        raise damaged(path, f"can't be read ({err.strerror or err})", what, fix, error) from None


def read_text(path: str | os.PathLike, what: str, fix: str, *, error: ErrorType = DamagedFileError) -> str:
    """The UTF-8 text of ``path``; an empty file, a directory or binary garbage raise ``error``."""
    path = Path(path)
    data = _read_bytes(path, what, fix, error)
    if not data.strip():
        raise damaged(path, "is empty", what, fix, error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise damaged(path, f"is not UTF-8 text (byte {err.start} is {data[err.start]:#04x}: garbage or a binary "
                            "file)", what, fix, error) from None


_JSON_TYPES = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number",
               type(None): "null"}


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type ("object", "list", ...)."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def read_json(path: str | os.PathLike, what: str, fix: str, *, expect: type | None = dict,
              error: ErrorType = DamagedFileError) -> Any:
    """The parsed JSON of ``path``, which must be a JSON ``expect`` (None: any value)."""
    path = Path(path)
    text = read_text(path, what, fix, error=error)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        # A cut-off file fails at its very end, or in a string that never closes.
        if err.pos >= len(text.rstrip()) or err.msg.startswith("Unterminated string"):
            problem = (f"is not valid JSON: it stops short, as a truncated file does (line {err.lineno}, column "
                       f"{err.colno}: {err.msg})")
        else:
            problem = f"is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})"
        raise damaged(path, problem, what, fix, error) from None
    except RecursionError:
        raise damaged(path, "is not valid JSON (nested too deeply)", what, fix, error) from None
    if expect is not None and not isinstance(data, expect):
        raise damaged(path, f"holds a JSON {json_type(data)}, not a JSON {_JSON_TYPES.get(expect, expect.__name__)}",
                      what, fix, error)
    return data


def check_fields(data: dict[str, Any], types: dict[str, type | tuple[type, ...]], path: str | os.PathLike,
                 what: str, fix: str, *, error: ErrorType = DamagedFileError) -> None:
    """Raise unless every key of ``types`` is in ``data`` with a value of that type (a bool is no int)."""
    for key, typ in types.items():
        if key not in data:
            raise damaged(path, f"lacks the key {key!r}", what, fix, error)
        value = data[key]
        wanted = typ if isinstance(typ, tuple) else (typ,)
        if not isinstance(value, wanted) or (isinstance(value, bool) and bool not in wanted):
            names = " or ".join(_JSON_TYPES.get(t, t.__name__) for t in wanted)
            raise damaged(path, f"has {key!r} = {_short(value)} (a JSON {json_type(value)}), not a JSON {names}",
                          what, fix, error)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------------------------


def _expected_size(path: Path) -> int | None:
    """Bytes a safetensors file should have by its own header (8 + header + last tensor's end)."""
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        return 8 + n + max(ends, default=0)
    except Exception:  # the header itself is what is damaged; the caller says so
        return None


def _safetensors_problem(path: Path, err: Exception) -> str:
    """What safetensors' error (or an OSError) means for ``path``, in words."""
    text = str(err).removeprefix("Error while deserializing header: ")
    if isinstance(err, OSError):
        return f"can't be read ({err.strerror or err})"
    try:
        size = path.stat().st_size
    except OSError:
        size = None
    if size == 0:
        why = "it is empty"
    elif "header too small" in text or "invalid header length" in text:
        why = f"it is truncated ({size} bytes: it ends inside its header)"
    elif "not fully covered" in text:
        expected = _expected_size(path)
        if expected is not None and size is not None and size < expected:
            why = f"it is truncated ({size} of the {expected} bytes its header describes)"
        elif expected is not None and size is not None and size > expected:
            why = f"it has {size - expected} stray bytes after its last tensor (a torn or concatenated write)"
        else:
            why = f"it is truncated or overwritten ({text})"
    elif "header too large" in text or "invalid json in header" in text.lower() or "invalid header" in text.lower():
        why = f"its header is garbage ({text})"
    else:
        why = text
    return f"is not a readable safetensors file: {why}"


@contextlib.contextmanager
def open_safetensors(path: str | os.PathLike, what: str, fix: str, *, keys: Iterable[str] = (),
                     metadata: Iterable[str] = (), framework: str = "pt",
                     error: ErrorType = DamagedFileError) -> Iterator[Any]:
    """``safetensors.safe_open`` of ``path``, its header validated: the tensors ``keys`` and the
    metadata entries ``metadata`` must be present. safetensors' errors raised while the block
    reads tensors become ``error`` too; the caller's own exceptions pass through."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    check_file(path, what, fix, error)
    try:
        handle = safe_open(str(path), framework=framework)
    except (SafetensorError, OSError) as err:
        raise damaged(path, _safetensors_problem(path, err), what, fix, error) from None
    with handle as f:
        missing = sorted(set(keys) - set(f.keys()))
        if missing:
            raise damaged(path, f"lacks the tensor(s) {missing} (it holds {sorted(f.keys())[:8]})", what, fix, error)
        meta = f.metadata() or {}
        absent = [k for k in metadata if k not in meta]
        if absent:
            raise damaged(path, f"lacks the metadata entr{'y' if len(absent) == 1 else 'ies'} {absent}", what, fix,
                          error)
        try:
            yield f
        except SafetensorError as err:
            raise damaged(path, _safetensors_problem(path, err), what, fix, error) from None


def check_safetensors(path: str | os.PathLike, what: str, fix: str, *, keys: Iterable[str] = (),
                      metadata: Iterable[str] = (), error: ErrorType = DamagedFileError) -> tuple[set[str], dict]:
    """Validate ``path``'s header only (cheap for any size): (its tensor names, its metadata)."""
    with open_safetensors(path, what, fix, keys=keys, metadata=metadata, error=error) as f:
        return set(f.keys()), dict(f.metadata() or {})


def load_safetensors(path: str | os.PathLike, what: str, fix: str, *, keys: Iterable[str] = (),
                     metadata: Iterable[str] = (), framework: str = "pt",
                     error: ErrorType = DamagedFileError) -> tuple[dict[str, Any], dict[str, str]]:
    """Every tensor of ``path`` and its metadata, the header validated as in :func:`open_safetensors`."""
    with open_safetensors(path, what, fix, keys=keys, metadata=metadata, framework=framework, error=error) as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
