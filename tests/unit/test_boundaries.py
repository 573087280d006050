"""The layers are enforced: import-linter's contracts (.importlinter) hold.

`make check` runs `lint-imports` too; this test makes a broken contract a failed
test wherever pytest runs. The contracts: schemas imports only pydantic and the
standard library; the pure cores import no I/O; the services do not import each
other; entry points over services over shared code; no import cycles in a package.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
# dimsebus.schemas.export writes asyncapi.yaml with PyYAML (as in .importlinter's ignore_imports).
SCHEMAS_MAY_IMPORT = {"pydantic", "pydantic_core", "typing_extensions"}
SCHEMAS_EXCEPTIONS = {("dimsebus.schemas.export", "yaml")}


def test_every_import_contract_is_kept() -> None:
    result = subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / ".importlinter"), "--no-cache", "--no-logo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_schemas_import_only_pydantic_and_the_standard_library() -> None:
    # an allow-list: a contract of forbidden modules cannot name every other package
    graph = grimp.build_graph("dimsebus", include_external_packages=True, cache_dir=None)
    allowed = SCHEMAS_MAY_IMPORT | set(sys.stdlib_module_names)
    bad = {
        (importer, imported)
        for importer in graph.modules
        if importer.startswith("dimsebus.schemas")
        for imported in graph.find_modules_directly_imported_by(importer)
        if imported.split(".")[0] not in allowed and not imported.startswith("dimsebus.schemas")
    }
    assert bad == SCHEMAS_EXCEPTIONS
