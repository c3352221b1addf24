"""Symbolizing a module's addresses against binutils, without booting: the crash module of
test_oops_decode built for an installed kernel, every byte of every function looked up by kmodkit and by
``addr2line -i -f -j SECTION`` (function, line and the inline chain must agree), and the module file
found by build id among decoys, compressed or not."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import KernelTree, discover_trees, need
from test_oops_decode import MODES, build_crashy

from kmodkit.klog.diagnose import Decoder
from kmodkit.klog.locate import ModuleFinder
from kmodkit.klog.logread import scan_bytes
from kmodkit.klog.symbolize import ModuleDebugInfo
from kmodkit.modfile.compress import Compression, compress

pytestmark = [pytest.mark.kernel]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = next((t for t in discover_trees() if t.headers is not None), None)
    if tree is None:
        need("an installed kernel's headers")
    assert tree is not None
    d = tmp_path_factory.mktemp("crashy")
    assert tree.headers is not None
    build_crashy(d, tree.headers)
    return d


def _addr2line(ko: Path, section: str, offsets: list[int]) -> list[list[tuple[str, int]]]:
    """addr2line's answer per offset: [(function, line), ...] innermost first."""
    out = subprocess.run(["addr2line", "-a", "-i", "-f", "-e", str(ko), "-j", section, *map(hex, offsets)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    answers: list[list[tuple[str, int]]] = []
    i = 0
    while i < len(out):
        if out[i].startswith("0x"):
            answers.append([])
            i += 1
            continue
        line = out[i + 1].rsplit(":", 1)[1].split()[0]
        answers[-1].append((out[i], int(line) if line.isdigit() else 0))
        i += 2
    return answers


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_address_of_every_function_decodes_as_addr2line(built: Path, mode: str) -> None:
    if shutil.which("addr2line") is None:
        need("binutils (addr2line)")
    ko = built / f"crashy_{mode}.ko"
    info = ModuleDebugInfo(str(ko))
    assert info.has_dwarf
    by_section: dict[str, list[tuple[int, int]]] = {}
    for name, (addr, size) in info._functions.items():  # noqa: SLF001 - the oracle needs every function
        for off in range(size):
            section, offset = info.section_address(addr + off)
            by_section.setdefault(section, []).append((offset, addr + off))
    checked = inlined = 0
    for section, pairs in by_section.items():
        expected = _addr2line(ko, section, [o for o, _a in pairs])
        for (offset, addr), want in zip(pairs, expected):
            got = [(loc.function, loc.line) for loc in info.locate(addr)]
            assert got == want, (section, hex(offset))
            checked += 1
            inlined += len(want) > 1
    assert checked > 50
    if mode == "inline":
        assert inlined > 0  # crashy_peek, inlined into crashy_walk


def test_module_found_by_build_id_among_decoys_and_compressed(built: Path, tmp_path: Path) -> None:
    real = built / "crashy_inline.ko"
    decoy_dir, xz_dir = tmp_path / "decoys", tmp_path / "xz"
    decoy_dir.mkdir()
    xz_dir.mkdir()
    shutil.copy(built / "crashy_null.ko", decoy_dir / "crashy_inline.ko")  # same name, another build id
    (xz_dir / "crashy_inline.ko.xz").write_bytes(compress(real.read_bytes(), Compression.XZ))
    build_id = ModuleDebugInfo(str(real)).build_id
    assert build_id
    finder = ModuleFinder([str(decoy_dir), str(xz_dir)])
    assert finder.find("crashy_inline") == str(decoy_dir / "crashy_inline.ko")  # no build id: the first
    assert finder.find("crashy-inline", build_id) == str(xz_dir / "crashy_inline.ko.xz")
    assert finder.find("crashy_inline", "00" * 20) is None
    # kmodkit build's out/KVER/ under the project, for the kernel the report (or -k) names
    (tmp_path / "proj/out/6.1.0-99-amd64").mkdir(parents=True)
    shutil.copy(real, tmp_path / "proj/out/6.1.0-99-amd64/crashy_inline.ko")
    in_build = ModuleFinder(project=str(tmp_path / "proj"), root=str(tmp_path))
    assert in_build.find("crashy_inline", build_id, kver="6.1.0-99-amd64") == \
        str(tmp_path / "proj/out/6.1.0-99-amd64/crashy_inline.ko")
    assert in_build.find("crashy_inline", build_id, kver="6.1.0-98-amd64") is None
    # decoding through the compressed file gives what the plain file gives
    log = (f"BUG: kernel NULL pointer dereference, address: 0000000000000000\nCall Trace:\n <TASK>\n"
           f" crashy_walk+0x5/0x20 [crashy_inline {build_id}]\n crashy_init+0x1b/0x32 [crashy_inline {build_id}]\n"
           " </TASK>\n").encode()
    (rep,) = scan_bytes(log)
    via_xz = Decoder(ModuleFinder([str(decoy_dir), str(xz_dir)])).diagnose(rep)
    plain = Decoder(ModuleFinder([str(built)])).diagnose(rep)
    assert {i: f.locations for i, f in via_xz.frames.items()} == {i: f.locations for i, f in plain.frames.items()}
    assert all(f.module_file and f.module_file.endswith(".ko.xz") for f in via_xz.frames.values())
    assert all(f.locations for f in plain.frames.values())


def test_a_module_without_debug_info_decodes_to_nothing(xz_tree: KernelTree) -> None:
    """Debian's own modules (here .ko.xz) carry no DWARF: read, but no lines (and no error)."""
    path = next(p for p in xz_tree.modules() if p.name.startswith("af_key."))
    info = ModuleDebugInfo(str(path))
    assert not info.has_dwarf and info.locate(0) == []
    assert info.address("pfkey_sendmsg", 0) is not None


def test_text_output_appends_file_line_and_inline_callers(built: Path) -> None:
    from kmodkit.klog.diagnose import render_text

    info = ModuleDebugInfo(str(built / "crashy_inline.ko"))
    start, size = info._functions["crashy_walk"]  # noqa: SLF001
    off = next(o for o in range(size) if len(info.locate(start + o)) > 1)  # an address inside crashy_peek
    log = (f"BUG: kernel NULL pointer dereference, address: 0000000000000000\n"
           f"RIP: 0010:crashy_walk+0x{off:x}/0x{size:x} [crashy_inline]\nCall Trace:\n <TASK>\n"
           " crashy_init+0x1b/0x32 [crashy_inline]\n </TASK>\n---[ end trace 0000000000000000 ]---\n").encode()
    (rep,) = scan_bytes(log)
    text = render_text(Decoder(ModuleFinder([str(built)])).diagnose(rep))
    inner, outer = info.locate(start + off)
    assert inner.function == "crashy_peek" and outer.function == "crashy_walk"
    assert f"RIP: 0010:crashy_walk+0x{off:x}/0x{size:x} [crashy_inline] {inner.file}:{inner.line} (crashy_peek)\n" \
        f" (inlined by) crashy_walk {outer.file}:{outer.line}\n" in text
    assert text.startswith("== BUG: kernel NULL pointer dereference in crashy_walk  [null-deref, <memory>, byte 0]\n")
