"""Property test: mutated real module bytes and compressed streams never raise anything but our errors.

Both consumers of the one reader are driven: ``info``'s views and the index's scan; they must agree on
which inputs are modules (one verdict, kmod's).
"""

from __future__ import annotations

import lzma

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import KernelTree
from kmodkit.errors import KmodkitError
from kmodkit.index.scan import read_module_data
from kmodkit.modfile import ModuleFile
from kmodkit.modfile.describe import format_modinfo, modinfo_fields, to_json

SETTINGS = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                    derandomize=True)


def _exercise(data: bytes) -> None:
    """Read everything a module offers; only kmodkit's own errors may escape; info and index agree."""
    try:
        mod = ModuleFile.from_bytes(data, "fuzz.ko", limit=8 << 20)
    except KmodkitError as exc:
        assert str(exc)  # every error explains itself
        return
    try:
        mod.elf
    except KmodkitError as exc:
        assert str(exc)
        with pytest.raises(KmodkitError):  # the index refuses what info refuses...
            read_module_data(bytes(mod.data), "fuzz.ko")
        mod.close()
        return
    try:
        read_module_data(bytes(mod.data), "fuzz.ko")
    except KmodkitError as exc:  # ...and reads the rest, but for a symbol table libkmod cannot read either
        assert "symbol" in exc.problem, exc
    try:
        format_modinfo(b"fuzz.ko", modinfo_fields(mod))
        format_modinfo(b"fuzz.ko", modinfo_fields(mod), field="parm", separator=b"\0")
        to_json(mod)
    except KmodkitError as exc:
        assert str(exc)
    mod.close()


@pytest.fixture(scope="module")
def small_modules(generic_tree: KernelTree) -> list[bytes]:
    """A few small real modules (signed, with parameters, exports and relocations)."""
    picks = []
    for p in generic_tree.modules():
        if p.name in ("af_key.ko", "xfrm_algo.ko", "snd-intel-sdw-acpi.ko", "loop.ko", "dummy.ko"):
            picks.append(p.read_bytes())
    assert len(picks) >= 3
    return picks


_XZ: dict[int, bytes] = {}


def _xz(data: bytes) -> bytes:
    key = hash(data)
    if key not in _XZ:
        _XZ[key] = lzma.compress(data, check=lzma.CHECK_CRC32)
    return _XZ[key]


mutation = st.tuples(st.integers(min_value=0, max_value=10**9), st.integers(min_value=0, max_value=255))


@pytest.mark.kernel
@SETTINGS
@given(which=st.integers(min_value=0, max_value=4), flips=st.lists(mutation, min_size=1, max_size=8),
       cut=st.one_of(st.none(), st.integers(min_value=0, max_value=10**9)))
def test_mutated_real_modules(small_modules: list[bytes], which: int, flips: list[tuple[int, int]],
                              cut: int | None) -> None:
    data = bytearray(small_modules[which % len(small_modules)])
    # favour the places corruption hurts: the ELF header, the section table, the trailer
    hot = [0, len(data) - 64 * 40, len(data) - 700]
    for pos, value in flips:
        base = hot[pos % 3] if pos % 2 else 0
        data[(base + pos) % len(data)] = value
    if cut is not None:
        del data[cut % len(data):]
    _exercise(bytes(data))


@pytest.mark.kernel
@SETTINGS
@given(flips=st.lists(mutation, min_size=1, max_size=4), cut=st.one_of(st.none(), st.integers(0, 10**9)))
def test_mutated_xz_streams(small_modules: list[bytes], flips: list[tuple[int, int]], cut: int | None) -> None:
    data = bytearray(_xz(small_modules[0]))
    for pos, value in flips:
        data[pos % len(data)] = value
    if cut is not None:
        del data[cut % len(data):]
    _exercise(bytes(data))


@SETTINGS
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    _exercise(b"\x7fELF\x02\x01\x01" + data)
