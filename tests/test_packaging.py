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
