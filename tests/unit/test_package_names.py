"""What ``pip install`` puts into site-packages is the project's own name (issue 20, item 6).

The code lives in the folders ``services/`` and ``schemas/``; ``dimsebus/`` links to
them, so the wheel holds ``dimsebus.services`` and ``dimsebus.schemas`` and nothing
generic lands at the top level, where it would collide with other projects.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_installs_only_the_dimsebus_package(tmp_path: Path) -> None:
    # built from a copy: setuptools writes build/ and *.egg-info next to the sources
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("dimsebus", "services", "schemas"):
        shutil.copytree(ROOT / name, source / name, symlinks=True, ignore=_caches)
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "--wheel-dir", str(tmp_path), str(source)], check=True, timeout=120)
    (wheel,) = tmp_path.glob("dimsebus-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"dimsebus"}
    assert "dimsebus/services/node/server.py" in names
    assert "dimsebus/schemas/json/asyncapi.yaml" in names
    # the tracker's web page: its templates, script and style (package data)
    assert "dimsebus/services/tracker/web/templates/moves.html" in names
    assert "dimsebus/services/tracker/web/static/web.js" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "dimsebus = dimsebus.services.cli:main" in scripts


def _caches(folder: str, names: list[str]) -> set[str]:
    return {name for name in names if name == "__pycache__"}


def test_the_code_imports_its_modules_by_their_installed_names() -> None:
    # `import services` would work from the repository's root and give a second copy
    # of every module: ruff's banned-api rule (pyproject.toml) refuses it.
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ruff"), "check", "--select", "TID251", "--quiet", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout
