"""A non-editable install ships every subpackage and the default search config; the lock matches pyproject.toml."""
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_for_installation():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "esam").rglob("__init__.py")}
    assert found <= listed, f"missing from pyproject.toml: {sorted(found - listed)}"
    assert "esam.tune_configs" in listed  # tune_configs/ installs as esam.tune_configs (quickstart.yaml)


def _locked() -> dict[str, str]:
    """requirements.lock as {canonical name: version}; each line must be a plain `name==version` pin."""
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        # pip refuses a constraints file whose lines carry extras ("Constraints cannot have extras")
        assert not req.extras and len(specs) == 1 and specs[0].operator == "==", f"requirements.lock: not a pin: {line}"
        pins[canonicalize_name(req.name)] = specs[0].version
    return pins


def test_the_lock_pins_every_dependency_within_pyproject_ranges():
    """requirements.lock cannot drift from pyproject.toml: re-lock (README: Upgrading the lock) after changing either."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    declared = [*project["dependencies"], *extras["test"], *extras["postgres"]]
    pins = _locked()
    problems = []
    for text in declared:
        req = Requirement(text)
        version = pins.get(canonicalize_name(req.name))
        if version is None:
            problems.append(f"{text}: no pin in requirements.lock")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{text}: requirements.lock pins {version}")
    assert not problems, "\n".join(problems)
