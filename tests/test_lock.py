"""requirements.lock is what `make install` (and so CI) installs with --no-deps: every package pyproject.toml asks
for, in the extras `make lock` installs, must be in it at a version the declared range allows. A package added to
pyproject.toml without a `make lock` would otherwise pass here and be missing on a fresh clone."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def locked() -> dict[str, str]:
    pins = {}
    for number, line in enumerate((ROOT / "requirements.lock").read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, separator, version = line.partition("==")
        assert separator, f"requirements.lock:{number}: not an exact pin: {line!r}"
        pins[canonicalize_name(name)] = version
    return pins


def wanted() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = re.search(r"^LOCK_EXTRAS := (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1).split(",")
    assert set(extras) == set(project["optional-dependencies"]), "make lock must install every extra"
    names = project["dependencies"] + [r for extra in extras for r in project["optional-dependencies"][extra]]
    return [Requirement(name) for name in names]


def test_every_declared_package_is_locked_at_an_allowed_version():
    pins = locked()
    missing = [str(r) for r in wanted() if canonicalize_name(r.name) not in pins]
    assert not missing, f"in pyproject.toml but not in requirements.lock (run `make lock`): {missing}"
    outside = [f"{r} locked at {pins[canonicalize_name(r.name)]}" for r in wanted()
               if not r.specifier.contains(pins[canonicalize_name(r.name)].split("+")[0], prereleases=True)]
    assert not outside, outside


def test_torch_is_the_cpu_build_on_this_machines_disk():
    assert locked()["torch"] == "2.13.0+cpu"  # an unpinned torch pulls a multi-GB CUDA build
