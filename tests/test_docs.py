"""Documentation stays in step with the code."""

import inspect
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))
import make_api  # noqa: E402


def test_api_reference_is_up_to_date():
    # docs/api.md is generated from the docstrings; a stale file means an undocumented change.
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "make_api.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("module_name", make_api.MODULES)
def test_every_public_function_has_a_docstring(module_name):
    module = pytest.importorskip(module_name)
    for name, obj in make_api.public_members(module):
        assert inspect.getdoc(obj), f"{module_name}.{name} has no docstring"


def test_every_module_is_in_the_api_reference():
    # qdjax.cli is documented in docs/cli.md (generated from its parser), the rest in docs/api.md
    package = ROOT / "qdjax"
    found = {".".join(p.relative_to(ROOT).with_suffix("").parts) for p in package.rglob("*.py") if p.name != "__init__.py"}
    assert found - {"qdjax.cli"} == set(make_api.MODULES)
