"""Every ``tttgraph.<name>`` that an error message or docstring of the package names exists.

Messages tell the user what to call (``re-capture with tttgraph.capture.capture(model, inputs)``); a
rename must not leave them naming a function that is gone. Every string literal of the package's
modules (``tttgraph/``, ``passes/``, ``kernels/ttt_mlp/``; f-strings' literal parts and docstrings
included) is searched for dotted ``tttgraph.a.b`` references; each is resolved by importing its
longest module prefix and ``getattr`` of the rest, and a reference written as a call
(``tttgraph.x(``) must be callable and not a module.
"""

from __future__ import annotations

import ast
import importlib
import re
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = (ROOT / "tttgraph", ROOT / "passes", ROOT / "kernels" / "ttt_mlp")
# ``tttgraph.`` preceded by a word character, a dot, a colon (``tttgraph::ttt_mlp``), a slash or a dash
# is part of another name (a path, an op namespace); ``~`` (Sphinx's short form) is allowed.
REFERENCE = re.compile(r"(?<![\w.:/-])(tttgraph(?:\.[A-Za-z_]\w*)+)(\()?")


def _not_python_names() -> set[str]:
    """Strings shaped like references that name something else: ONNX metadata keys."""
    from tttgraph.exporter import FRAMES_METADATA

    return {FRAMES_METADATA}


def references() -> dict[tuple[str, bool], list[str]]:
    """(dotted name, written as a call) -> where (``file:line``), from every string literal."""
    found: dict[tuple[str, bool], list[str]] = {}
    for folder in FOLDERS:
        for path in sorted(folder.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    for match in REFERENCE.finditer(node.value):
                        key = (match.group(1), match.group(2) is not None)
                        found.setdefault(key, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


class _Unresolvable(Exception):
    """The module exists but imports an optional package that is not installed."""


def resolve(dotted: str):
    """The object ``dotted`` names: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError as err:
            if err.name and err.name.split(".")[0] != "tttgraph":
                raise _Unresolvable(err.name) from err
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(dotted)


def problems(found: dict[tuple[str, bool], list[str]], skip: set[str] = frozenset()) -> list[str]:
    bad = []
    for (dotted, call), where in sorted(found.items()):
        if dotted in skip:
            continue
        try:
            obj = resolve(dotted)
        except _Unresolvable:  # a module behind an optional package that is not installed here
            continue
        except (AttributeError, ImportError) as err:
            bad.append(f"{dotted}{'(' if call else ''} at {', '.join(where)}: does not exist ({err})")
            continue
        if call and (isinstance(obj, types.ModuleType) or not callable(obj)):
            bad.append(f"{dotted}( at {', '.join(where)}: is a {type(obj).__name__}, not something to call")
    return bad


def test_every_tttgraph_name_in_a_message_or_docstring_exists():
    found = references()
    assert len(found) > 40, "the scan found too few references: is the pattern right?"
    for key in (("tttgraph.capture.capture", True), ("tttgraph.transform", True)):
        assert key in found, key
    bad = problems(found, _not_python_names())
    assert not bad, "messages name what does not exist:\n" + "\n".join(bad)


def test_the_check_catches_a_missing_name_and_a_module_called_like_a_function():
    found = {
        ("tttgraph.analyse", False): ["x.py:1"],  # no such attribute of the package
        ("tttgraph.capture", True): ["x.py:2"],  # a module, written as a call
        ("tttgraph.nosuchmodule.thing", False): ["x.py:3"],
        ("tttgraph.capture.capture", True): ["x.py:4"],  # fine
        ("tttgraph.analysis.analyse", False): ["x.py:5"],  # fine
    }
    bad = problems(found)
    assert [line.split(" at ")[0] for line in bad] == ["tttgraph.analyse", "tttgraph.capture(",
                                                       "tttgraph.nosuchmodule.thing"]
    text = "re-capture with tttgraph.capture(model, inputs); tttgraph::ttt_mlp; run/tttgraph.x; :class:`~tttgraph.y`."
    assert [(m.group(1), m.group(2)) for m in REFERENCE.finditer(text)] == [("tttgraph.capture", "("),
                                                                          ("tttgraph.y", None)]
