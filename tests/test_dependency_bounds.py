"""pyproject.toml's lower bounds are the versions scripts/test runs the tests against."""

from __future__ import annotations

import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def _pins() -> dict[str, tuple[str, str]]:
    """Name -> (pinned version, marker) of each line of tests/lower-bounds.txt."""
    pins = {}
    for line in (ROOT / "tests" / "lower-bounds.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(req.name)] = (spec.version, str(req.marker or ""))
    return pins


def test_every_runtime_dependency_has_a_tested_lower_bound_and_an_upper_bound() -> None:
    """Each dependency's `>=` is the pinned version the lower-bounds run uses, under the
    same marker, and a `<` caps it: on every Python, not only this one's."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins()
    checked = set()
    for text in project["dependencies"]:
        req = Requirement(text)
        specs = {spec.operator: spec.version for spec in req.specifier}
        name = canonicalize_name(req.name)
        assert "<" in specs, f"{req.name} has no upper bound"
        assert name in pins, f"{req.name} is not in tests/lower-bounds.txt"
        assert pins[name][1] == str(req.marker or ""), (req.name, pins[name][1])
        lower = specs[">="]
        assert Version(pins[name][0]) == Version(lower), (req.name, lower, pins[name])
        checked.add(name)
    assert checked == set(pins)


def test_every_test_and_build_dependency_has_both_bounds() -> None:
    """The test extra and the build requirements are bounded both ways too: a fresh
    resolve must not pick up a major release nobody has run the suite with."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    texts = [*data["project"]["optional-dependencies"]["test"], *data["build-system"]["requires"]]
    for text in texts:
        operators = {spec.operator for spec in Requirement(text).specifier}
        assert ">=" in operators, f"{text}: no lower bound"
        assert "<" in operators, f"{text}: no upper bound"
