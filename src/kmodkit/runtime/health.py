"""Is what a manifest expects loaded and healthy?  The answer monitoring systems and probes use.

The manifest is a kmodkit.toml: its ``[module]`` table (name, version) is one
expectation; ``[[health.modules]]`` entries add more (name, and optionally
version, srcversion, allow_taint); ``[health] allow_taint`` sets the taint
letters that are expected (default "OE": out-of-tree, unsigned).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from kmodkit.errors import ConfigError, NotFoundError
from kmodkit.runtime.modules import KernelModules, ModuleState, ModuleStatus

DEFAULT_ALLOWED_TAINT = "OE"


@dataclass(frozen=True)
class Expectation:
    """One module a manifest expects."""

    name: str  #: the module's name
    version: str | None  #: the expected MODULE_VERSION, None for any
    srcversion: str | None  #: the expected srcversion, None for any
    allow_taint: str  #: taint letters that are not a problem


@dataclass(frozen=True)
class HealthResult:
    """The verdict on one expectation."""

    expectation: Expectation  #: what was expected
    problems: tuple[str, ...]  #: what is wrong, ``()`` when healthy
    status: ModuleStatus | None  #: what the kernel shows, None when not loaded

    @property
    def healthy(self) -> bool:
        """Whether nothing is wrong."""
        return not self.problems

    def to_json(self) -> dict[str, object]:
        """The result as a JSON object."""
        e = self.expectation
        return {"module": e.name, "healthy": self.healthy, "problems": list(self.problems),
                "expected": {"version": e.version, "srcversion": e.srcversion, "allow_taint": e.allow_taint},
                "status": self.status.to_json() if self.status else None}


def read_manifest(path: str) -> list[Expectation]:
    """The expectations of the manifest at ``path`` (a file or a project directory).

    Raises NotFoundError when absent, ConfigError when malformed or expecting nothing.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "kmodkit.toml"
    try:
        doc = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise NotFoundError(str(p), "no such manifest", "pass a kmodkit.toml or its project directory") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(p), f"not valid TOML: {exc}") from None
    health = doc.get("health", {})
    if not isinstance(health, dict):
        raise ConfigError(str(p), "health must be a table", "write [health]")
    default_taint = _str(health, "allow_taint", p, DEFAULT_ALLOWED_TAINT) or ""
    out: list[Expectation] = []
    module = doc.get("module")
    if isinstance(module, dict) and "name" in module:
        out.append(Expectation(_str(module, "name", p) or "", _str(module, "version", p), None, default_taint))
    entries = health.get("modules", [])
    if not isinstance(entries, list):
        raise ConfigError(str(p), "health.modules must be an array of tables", "write [[health.modules]]")
    for entry in entries:
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(str(p), "every [[health.modules]] needs a name", 'add name = "..."')
        out.append(Expectation(_str(entry, "name", p) or "", _str(entry, "version", p), _str(entry, "srcversion", p),
                               _str(entry, "allow_taint", p, default_taint) or ""))
    if not out:
        raise ConfigError(str(p), "expects no module", "add [module] name = ... or [[health.modules]] entries")
    return out


def _str(table: dict[str, object], key: str, path: Path, default: str | None = None) -> str | None:
    value = table.get(key, default)
    if value is not None and not isinstance(value, str):
        raise ConfigError(str(path), f"{key} must be a string", f'quote it: {key} = "..."')
    return value


def check(expectations: list[Expectation], kernel: KernelModules) -> list[HealthResult]:
    """The verdict on every expectation against the running kernel."""
    loaded = {m.name: m for m in kernel.status()}
    out = []
    for e in expectations:
        st = loaded.get(e.name.replace("-", "_"))
        if st is None:
            out.append(HealthResult(e, ("not loaded",), None))
            continue
        problems = []
        if st.state is not ModuleState.LIVE:
            problems.append(f"state is {st.state.value}, not Live")
        if e.version is not None and st.version != e.version:
            problems.append(f"version is {st.version or 'none'}, expected {e.version}")
        if e.srcversion is not None and st.srcversion != e.srcversion:
            problems.append(f"srcversion is {st.srcversion or 'none'}, expected {e.srcversion}")
        bad = [f for f in st.taint_flags if f.letter not in e.allow_taint]
        problems += [f"unexpected taint {f.letter}: {f.meaning}" for f in bad]
        out.append(HealthResult(e, tuple(problems), st))
    return out
