"""Is what a manifest expects loaded and healthy?  The answer monitoring systems and probes use.

The manifest is a kmodkit.toml, read by the one manifest reader
(:func:`kmodkit.kbuild.manifest.load_expectations`): its ``[module]`` table (name, version) is one
expectation; ``[[health.modules]]`` entries add more (name, and optionally version, srcversion,
allow_taint); ``[health] allow_taint`` sets the taint letters that are expected (default "OE":
out-of-tree, unsigned).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kmodkit.kbuild.manifest import DEFAULT_ALLOWED_TAINT, Expectation, load_expectations
from kmodkit.modfile.module import normalize_name
from kmodkit.runtime.modules import KernelModules, ModuleState, ModuleStatus

__all__ = ["DEFAULT_ALLOWED_TAINT", "Expectation", "HealthResult", "check", "read_manifest"]


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


def read_manifest(path: str | Path) -> list[Expectation]:
    """The expectations of the manifest at ``path`` (a file or a project directory).

    Raises NotFoundError when absent, ConfigError when malformed or expecting nothing.
    """
    return load_expectations(path)


def check(expectations: list[Expectation], kernel: KernelModules) -> list[HealthResult]:
    """The verdict on every expectation against the running kernel."""
    loaded = {m.name: m for m in kernel.status()}
    out = []
    for e in expectations:
        st = loaded.get(normalize_name(e.name))
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
