"""Readers for the project's pins: requirement lines, the conda env files and which rules use which env."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;#]+)$")


def canonical(name: str) -> str:
    """PEP 503 name: case and runs of -_. do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pin(line: str, where: str) -> tuple[str, str]:
    """`name==version` (comments stripped) as (canonical name, version); anything else is an error naming `where`."""
    text = line.split("#", 1)[0].strip()
    match = _PIN.match(text)
    if not match:
        raise ValueError(f"{where}: {line.strip()!r} is not an exact pin (name==version)")
    return canonical(match.group(1)), match.group(2)


def pins(lines: list[str], where: str) -> dict[str, str]:
    """Pins of requirement lines; blank and comment lines skipped, a package pinned twice is an error."""
    found: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        if not line.split("#", 1)[0].strip():
            continue
        name, version = parse_pin(line, f"{where}:{number}")
        if name in found:
            raise ValueError(f"{where}:{number}: {name} pinned twice")
        found[name] = version
    return found


def requirements_file(path: Path) -> dict[str, str]:
    return pins(path.read_text(encoding="utf-8").splitlines(), str(path.relative_to(REPO)))


@dataclass(frozen=True)
class CondaEnv:
    name: str
    python: str  # the `python=X.Y` dependency
    pip: str  # the `pip=X.Y` dependency
    requirements: list[str]  # the pip section, as written

    @property
    def pins(self) -> dict[str, str]:
        return pins(self.requirements, f"envs/{self.name}.yaml")


def conda_env(name: str) -> CondaEnv:
    """envs/<name>.yaml: its Python and pip versions and its pip section."""
    path = REPO / "envs" / f"{name}.yaml"
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    conda = {d.split("=", 1)[0]: d.split("=", 1)[1] for d in spec["dependencies"] if isinstance(d, str)}
    pip_sections = [d["pip"] for d in spec["dependencies"] if isinstance(d, dict)]
    if set(conda) != {"python", "pip"} or len(pip_sections) != 1:
        raise ValueError(f"{path}: expected exactly python=, pip= and one pip: section, got {spec['dependencies']}")
    return CondaEnv(name, conda["python"], conda["pip"], pip_sections[0])


def env_names() -> list[str]:
    return sorted(p.stem for p in (REPO / "envs").glob("*.yaml"))


def rules_by_env() -> dict[str, list[str]]:
    """env name -> the rules whose `conda:` directive names envs/<env>.yaml (rules without one left out)."""
    found: dict[str, list[str]] = {}
    for path in sorted((REPO / "rules").glob("*.smk")):
        for rule, body in re.findall(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)*)", path.read_text(encoding="utf-8"), re.M):
            env = re.search(r"^\s+conda:\s*\n\s+\"\.\./envs/(\w+)\.yaml\"", body, re.M)
            if env:
                found.setdefault(env.group(1), []).append(rule)
    return found
