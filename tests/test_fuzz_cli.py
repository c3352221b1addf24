"""A sample of the fuzz campaign on every run of the suite (benchmarks/fuzz.py runs the long one).

Mutated copies of the checked-in real modules (no installed kernel needed), in
batches through info (text, -F, --json, --summary), index, deps, sign and
verify: exit status never 4, no traceback, no hang, each bad item its own
``error:`` line naming it, good files processed in the same batch.  The
special files (FIFOs, /dev/zero, directories named .ko) are made in the test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fuzz.campaign import campaign
from fuzz.corpus import MUTATIONS, Input, Seed, apply, control, default_seed_paths, load_seeds, make_key
from fuzz.harness import COMMANDS, Harness

#: the suite's sample: a few hundred inputs (KMODKIT_FUZZ_SEED varies it; failures print it)
SEED = int(os.environ.get("KMODKIT_FUZZ_SEED", "20261130"))
SAMPLE = 240


class Keyed(tuple[Path, Path, list[Seed]]):
    """The run's key, certificate and seeds (a short repr: hypothesis prints the fixtures it failed with)."""

    def __repr__(self) -> str:
        return f"Keyed({self[0]}, {len(self[2])} seeds)"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Keyed:
    work = tmp_path_factory.mktemp("fuzz-key")
    key, cert = make_key(work)
    return Keyed((key, cert, load_seeds(default_seed_paths(), key, cert, work)))


def _harness(tmp_path: Path, keyed: Keyed, timeout: float) -> Harness:
    key, cert, _ = keyed
    return Harness(tmp_path / "work", key, cert, timeout=timeout)


@pytest.mark.slow
def test_seeded_sample_through_every_command(tmp_path: Path, keyed: Keyed) -> None:
    harness = _harness(tmp_path, keyed, timeout=60.0)
    report = campaign(harness, keyed[2], SEED, SAMPLE, batch=120, special_every=2, special_batch=12, bisect=0,
                      special_timeout=6.0, out=tmp_path / "repro")
    assert report.inputs == SAMPLE and report.runs == report.batches * len(COMMANDS)
    assert report.clean, f"{report.summary()}\n{report.details()}"


op = st.tuples(st.sampled_from(sorted(MUTATIONS)), st.integers(0, 2**32))
recipe = st.tuples(st.integers(0, 10**6), st.lists(op, min_size=1, max_size=4), st.none() | st.integers(0, 2**32))


@pytest.mark.slow
@settings(max_examples=4, deadline=None, derandomize=True, phases=(Phase.explicit, Phase.generate),  # no shrinking:
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # a batch is slow
@given(recipes=st.lists(recipe, min_size=10, max_size=40))
def test_hypothesis_batches_through_info_json_index_sign_verify(
        tmp_path: Path, keyed: Keyed, recipes: list[tuple[int, list[tuple[str, int]], int | None]]) -> None:
    seeds = keyed[2]
    items: list[Input] = [apply(seeds, i, pick, ops, packing) for i, (pick, ops, packing) in enumerate(recipes)]
    items.insert(len(items) // 2, control(seeds, 10_000_000, 0))
    harness = _harness(tmp_path / str(len(os.listdir(tmp_path))), keyed, timeout=60.0)
    findings = []
    for command in ("info-json", "index", "sign", "verify"):
        findings += harness.run(command, items).findings
    assert not findings, "\n".join(f"{f.kind} in {f.command}: {f.detail} {[i.describe() for i in f.inputs[:2]]}"
                                   for f in findings)
