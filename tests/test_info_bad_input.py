"""Bad input to `kmodkit info`: one clear error line per file, non-zero exit, no traceback, batch goes on.

Most corrupt files here are made in the test (a real module cannot show a
section table past its end); their test ids say "made_in_test".
"""

from __future__ import annotations

import json
import lzma
import os
import subprocess
import sys
from pathlib import Path

import pytest

from elfwriter import ElfSpec, build, modinfo_bytes, simple_module

KMODKIT = [sys.executable, "-m", "kmodkit"]


def info(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KMODKIT, "info", *args], capture_output=True, text=True, check=False)


def _spec_with(**changes: object) -> ElfSpec:
    spec = simple_module()
    for k, v in changes.items():
        setattr(spec, k, v)
    return spec


def _sections_with(index: int, **changes: object) -> ElfSpec:
    spec = simple_module()
    for k, v in changes.items():
        setattr(spec.sections[index], k, v)
    return spec


# Files kmod's modinfo cannot read either (it fails on each; on the out-of-range name table it aborts).
CORRUPT: dict[str, tuple[bytes, str]] = {
    "not_elf_made_in_test": (b"hello world, not a module at all\n" * 4, "not an ELF file"),
    "truncated_header_made_in_test": (build(simple_module())[:30], "truncated ELF header"),
    "section_table_past_end_made_in_test": (build(_spec_with(shoff=1 << 20)), "past the end of the file"),
    "truncated_file_made_in_test": (build(simple_module())[:-70], "past the end of the file"),
    "bad_name_offset_made_in_test": (build(_sections_with(1, name_offset=9999)), "name offset 9999"),
    "section_data_past_end_made_in_test": (build(_sections_with(1, size=1 << 24)), "past the end of the file"),
    "wrong_class_made_in_test": (build(_spec_with(ei_class=7)), "invalid ELF class 7"),
    "bad_shentsize_made_in_test": (build(_spec_with(e_shentsize=40)), "section header size 40"),
    "shstrndx_out_of_range_made_in_test": (build(_spec_with(shstrndx=99)), "out of range"),
    "no_modinfo_made_in_test": (build(ElfSpec(sections=simple_module().sections[2:])), "no readable .modinfo"),
    "corrupt_xz_made_in_test": (lzma.compress(build(simple_module()))[:40] + b"\0" * 40, "xz stream"),
    "empty_file_made_in_test": (b"", "file is empty"),
}

# Files kmod's modinfo reads although the kernel would not load them (or with a cut-off last string):
# kmodkit reads them too, byte for byte as modinfo prints them (issue 10 item 13: one verdict, kmod's).
KMOD_READS: dict[str, bytes] = {
    "not_relocatable_made_in_test": build(_spec_with(e_type=2)),
    "wrong_machine_made_in_test": build(_spec_with(e_machine=0)),
    "overlapping_sections_made_in_test": build(_sections_with(1, offset=64)),
    "modinfo_without_nul_made_in_test": build(simple_module(modinfo_bytes(("license", "GPL")) + b"name=cut")),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_file_gives_one_error_line(case: str, tmp_path: Path) -> None:
    data, expected = CORRUPT[case]
    path = tmp_path / f"{case}.ko"
    path.write_bytes(data)
    r = info(str(path))
    assert r.returncode != 0
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: {path}: ") and expected in lines[0], lines[0]
    assert "Traceback" not in r.stderr


def test_well_formed_made_in_test_module_is_read(tmp_path: Path) -> None:
    """The writer's own valid module reads fine: the corrupt cases above fail for their corruption only."""
    path = tmp_path / "tiny.ko"
    path.write_bytes(build(simple_module()))
    r = info(str(path))
    assert r.returncode == 0, r.stderr
    assert "license:        GPL\n" in r.stdout and "vermagic:       6.1.0-test" in r.stdout


@pytest.mark.parametrize("case", sorted(KMOD_READS))
def test_what_kmod_reads_is_read_like_modinfo(case: str, tmp_path: Path) -> None:
    """No stricter than kmod: a file modinfo reads prints exactly what modinfo prints, exit 0."""
    path = tmp_path / f"{case}.ko"
    path.write_bytes(KMOD_READS[case])
    theirs = subprocess.run(["modinfo", str(path)], capture_output=True)
    mine = subprocess.run([*KMODKIT, "info", str(path)], capture_output=True)
    assert theirs.returncode == 0, theirs.stderr
    assert (mine.returncode, mine.stdout, mine.stderr) == (0, theirs.stdout, b"")
    # what the kernel would refuse is still said, in the JSON document
    js = subprocess.run([*KMODKIT, "info", "--json", str(path)], capture_output=True, text=True)
    assert js.returncode == 0, js.stderr
    if case != "modinfo_without_nul_made_in_test":
        assert json.loads(js.stdout)[0]["elf_problems"]


def test_decompression_bomb_is_refused_made_in_test(tmp_path: Path) -> None:
    """An xz stream that expands past the cap is refused, named and not fully decompressed."""
    from kmodkit.errors import ModuleFormatError
    from kmodkit.modfile import ModuleFile

    bomb = lzma.compress(b"\0" * (64 << 20))
    path = tmp_path / "bomb.ko.xz"
    path.write_bytes(bomb)
    with pytest.raises(ModuleFormatError, match="decompression bomb"):
        ModuleFile.open(path, limit=16 << 20)


def test_truncated_zstd_is_refused_made_in_test(tmp_path: Path) -> None:
    import zstandard

    data = zstandard.ZstdCompressor().compress(build(simple_module()))
    path = tmp_path / "cut.ko.zst"
    path.write_bytes(data[:-6])
    r = info(str(path))
    assert r.returncode == 2 and "zst" not in r.stdout
    assert r.stderr.startswith(f"error: {path}: ") and "truncated" in r.stderr


def test_missing_file_and_directory(tmp_path: Path) -> None:
    r = info(str(tmp_path / "nope.ko"))
    assert r.returncode == 2
    assert r.stderr == f"error: {tmp_path / 'nope.ko'}: no such file or directory\n"
    r = info(str(tmp_path))
    assert r.returncode == 2
    assert r.stderr == f"error: {tmp_path}: is a directory, expected a module file\n"


@pytest.mark.kernel
def test_batch_reports_every_item(tmp_path: Path, sample_module: Path) -> None:
    """Good files are still printed around bad ones; every bad one has its line; exit status 1."""
    bad1 = tmp_path / "bad1.ko"
    bad1.write_bytes(b"garbage")
    bad2 = tmp_path / "bad2.ko"
    r = info(str(sample_module), str(bad1), str(sample_module), str(bad2))
    assert r.returncode == 2
    assert r.stdout.count("filename:") == 2
    assert r.stderr.splitlines() == [
        f"error: {bad1}: not an ELF file (no \\x7fELF magic)",
        f"error: {bad2}: no such file or directory",
    ]


def _trailer(raw: bytes, sig_len: int, id_type: int = 2) -> bytes:
    # the module with its struct module_signature rewritten (algo, hash, id_type, lengths, sig_len)
    return raw[:-40] + bytes([0, 0, id_type, 0, 0, 0, 0, 0]) + sig_len.to_bytes(4, "big") + raw[-28:]


@pytest.mark.kernel
def test_garbage_signature_trailer_made_in_test(tmp_path: Path, sample_module: Path) -> None:
    """A trailer whose length runs past the file start: modinfo shows the module unsigned, so do we, and
    --json says why; kmod-invalid PKCS#7 shows no sig fields."""
    raw = sample_module.read_bytes()
    p = tmp_path / "huge_sig.ko"
    p.write_bytes(_trailer(raw, len(raw) * 2))
    mine = info(str(p))
    theirs = subprocess.run(["modinfo", str(p)], capture_output=True, text=True)
    assert mine.returncode == 0 and mine.stdout == theirs.stdout and "sig_id" not in mine.stdout
    r = info("--json", str(p))
    assert r.returncode == 0
    assert json.loads(r.stdout)[0]["signature"] == {
        "trailer_well_formed": False,
        "error": f"signature trailer claims {len(raw) * 2} bytes of signature data, but only {len(raw) - 40} "
                 "bytes precede it",
    }

    t_len = int.from_bytes(raw[-32:-28], "big")
    garbled = bytearray(raw)
    start = len(raw) - 40 - t_len
    garbled[start:start + 4] = b"\x04\x01\x00\x00"  # not a SEQUENCE: PKCS#7 does not parse
    q = tmp_path / "garbled_pkcs7.ko"
    q.write_bytes(bytes(garbled))
    mine = info(str(q))
    theirs = subprocess.run(["modinfo", str(q)], capture_output=True, text=True)
    assert mine.returncode == 0 and mine.stdout == theirs.stdout
    assert "sig_id" not in mine.stdout
    js = info("--json", str(q))
    assert '"trailer_well_formed": false' in js.stdout and "not a valid PKCS#7" in js.stdout


@pytest.mark.kernel
def test_trailer_covering_the_whole_body_is_malformed_made_in_test(tmp_path: Path, sample_module: Path) -> None:
    """sig_len equal to everything before the trailer leaves no module: the one trailer reader says so
    (issue 10 item 4); info shows the module as modinfo does (unsigned), --json says why."""
    from kmodkit.errors import ModuleFormatError
    from kmodkit.modfile.signature import find_trailer

    raw = sample_module.read_bytes()
    whole = _trailer(raw, len(raw) - 40)
    with pytest.raises(ModuleFormatError, match="no module is left"):
        find_trailer(whole, "whole.ko")
    p = tmp_path / "whole_sig.ko"
    p.write_bytes(whole)
    mine = info(str(p))
    theirs = subprocess.run(["modinfo", str(p)], capture_output=True, text=True)
    assert mine.returncode == 0 and mine.stdout == theirs.stdout and "signer:" not in mine.stdout
    sig = json.loads(info("--json", str(p)).stdout)[0]["signature"]
    assert sig["trailer_well_formed"] is False and "no module is left" in sig["error"]


def test_no_traceback_without_debug_but_with_it(tmp_path: Path) -> None:
    """--debug shows a traceback for the same failure; the plain run does not."""
    p = tmp_path / "x.ko"
    p.write_bytes(b"\x7fELF\x02\x01" + b"\0" * 30)
    plain = subprocess.run([*KMODKIT, "info", str(p)], capture_output=True, text=True)
    assert "Traceback" not in plain.stderr and plain.returncode == 2
    env = dict(os.environ)
    debug = subprocess.run([*KMODKIT, "--debug", "info", str(p)], capture_output=True, text=True, env=env)
    assert debug.returncode == 2 and "error:" in debug.stderr
