"""The source tree installs as one package and nothing at the repository root shadows another one.

``python3 -m pytest``, ``python3 -m tttgraph`` and ``python3 -m examples...`` put the repository root
first on ``sys.path``, so a root folder that is a Python package would be imported instead of an
installed distribution of the same top-level name (``kernels``, which transformers imports, was one).
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    dirs = config["package-dir"]
    found = set()
    for package, folder in dirs.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *rel.parts]) if rel.parts else package)
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    for op_folder in (ROOT / "kernels").iterdir():
        if (op_folder / "__init__.py").is_file():
            assert dirs.get(f"tttgraph.kernels.{op_folder.name}") == f"kernels/{op_folder.name}", op_folder.name


def _imported_from_root(name: str) -> list[str]:
    """Where ``import name`` finds the module when Python runs in the repository root (as ``-m`` does)."""
    code = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.find_spec({name!r})\n"
        "print(json.dumps([] if spec is None else [spec.origin or '', *(spec.submodule_search_locations or [])]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_no_root_folder_shadows_an_installed_distribution():
    owners = importlib.metadata.packages_distributions()
    for folder in sorted(p for p in ROOT.iterdir() if p.is_dir() and p.name.isidentifier()):
        others = sorted(d for d in owners.get(folder.name, []) if d.lower() != "tttgraph")
        if not others:
            continue
        found = _imported_from_root(folder.name)
        inside = [p for p in found if p and Path(p).resolve().is_relative_to(ROOT)]
        assert not inside, (
            f"the root folder {folder.name}/ is imported instead of the installed distribution(s) {others} "
            f"(found at {found}); it must not be a Python package"
        )


def test_the_kernels_folder_is_not_a_package_and_installs_under_tttgraph():
    assert not (ROOT / "kernels" / "__init__.py").exists()
    import tttgraph.kernels.ttt_mlp as op_package

    assert Path(op_package.__file__).resolve() == ROOT / "kernels" / "ttt_mlp" / "__init__.py"


def test_the_wheel_ships_the_world_weights_and_the_bundled_story(tmp_path):
    """What `tttgraph generate --world default` and the world stages load on a machine that installed the wheel."""
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--wheel-dir", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("tttgraph-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in ("tttgraph/models/world_weights/transformer.safetensors",
                    "tttgraph/models/world_weights/text_encoder.safetensors",
                    "tttgraph/models/world_weights/training_report.json",
                    "tttgraph/generate/stories/one_minute.toml"):
        assert shipped in names, f"{shipped} is missing from {wheel.name}"
