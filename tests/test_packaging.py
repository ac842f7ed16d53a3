"""The dependency floors of pyproject.toml are the versions `.ci/lowest` tests."""

import pathlib
import re
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _floors() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["test"]
    floors = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9.]*)", requirement)
        assert match, f"pyproject.toml: {requirement!r} is not of the form name>=version"
        floors[match[1].lower()] = match[2]
    return floors


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / ".ci" / "lowest-versions.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def test_every_floor_is_pinned_for_the_lowest_versions_run():
    assert _pins() == _floors()


def test_ci_runs_the_lowest_versions():
    run = (ROOT / ".ci" / "run").read_text()
    lowest = (ROOT / ".ci" / "lowest").read_text()
    assert ".ci/lowest" in run.split("pytest", 1)[1]
    assert "-c .ci/lowest-versions.txt" in lowest and "pytest" in lowest


def test_every_third_party_import_of_the_package_is_a_declared_dependency():
    # Issue 28, finding 8: threadpoolctl and filelock came in as dependencies. Every top-level
    # module that qdjax imports is in the standard library or installed by a runtime requirement.
    import ast
    import importlib.metadata
    import sys

    def normal(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    declared = {normal(name) for name in _runtime()}
    provided = {module for module, distributions in importlib.metadata.packages_distributions().items()
                if any(normal(d) in declared for d in distributions)}  # fmt: skip
    imported = set()
    for path in (ROOT / "qdjax").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m != "qdjax"}
    assert {"threadpoolctl", "filelock"} <= third_party
    assert third_party <= provided, sorted(third_party - provided)


def _runtime() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {re.split(r"[<>=]", r)[0].lower() for r in project["dependencies"]}
