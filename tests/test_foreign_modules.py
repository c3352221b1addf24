"""Real modules of every ELF class and byte order, checked in (tests/data/SOURCES.md): no installed kernel needed.

The expectations beside each module were recorded with kmod's ``modinfo`` and
``modprobe --dump-modversions`` and binutils (tests/data/record.py); the index
is compared with kmod's ``depmod -b`` run live on a tiny tree of them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import need
from kmodkit.cli.main import main

DATA = Path(__file__).parent / "data" / "modules"
MODULES = sorted(p for p in DATA.glob("*/*.ko*") if not p.name.endswith(".txt"))
IDS = [f"{p.parent.name}/{p.name}" for p in MODULES]
ARCHES = sorted({p.parent.name for p in MODULES})
KMODKIT = [sys.executable, "-m", "kmodkit"]
#: the ten files depmod writes
INDEX_FILES = ("modules.dep", "modules.dep.bin", "modules.alias", "modules.alias.bin", "modules.softdep",
               "modules.symbols", "modules.symbols.bin", "modules.builtin.bin", "modules.builtin.alias.bin",
               "modules.devname")


def expected(path: Path) -> dict[str, str]:
    """The recorded outputs of one module: command title -> output, with ``@FILE@`` made the real path."""
    text = path.with_name(path.name + ".expected.txt").read_text()
    sections: dict[str, str] = {}
    for block in re.split(r"^=== ", text, flags=re.M)[1:]:
        title, _, body = block.partition("\n")
        sections[title] = body.replace("@FILE@", str(path))
    return sections


def run_info(capsysbinary: pytest.CaptureFixture[bytes], *args: str) -> tuple[int, str]:
    status = main(["info", *args])
    out, err = capsysbinary.readouterr()
    assert err == b"", err
    return status, out.decode()


def test_checked_in_modules_cover_every_class_and_byte_order() -> None:
    seen = set()
    for path in MODULES:
        head = path.read_bytes()[:6]
        if path.suffix == ".xz":
            assert head.startswith(b"\xfd7zXZ"), path
            continue
        assert head[:4] == b"\x7fELF", path
        seen.add((head[4], head[5]))
    # (EI_CLASS, EI_DATA): ELF32 LE (i386, armhf), ELF64 LE (amd64, arm64), ELF64 BE (s390x)
    assert {(1, 1), (2, 1), (2, 2)} <= seen
    assert any(p.suffix == ".xz" for p in MODULES)


@pytest.mark.parametrize("path", MODULES, ids=IDS)
def test_info_text_equals_recorded_modinfo(path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out = run_info(capsysbinary, str(path))
    assert status == 0
    assert out == expected(path)["modinfo FILE"]


@pytest.mark.parametrize("path", MODULES, ids=IDS)
def test_info_field_equals_recorded_modinfo(path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    sections = expected(path)
    fields = [t.split()[2] for t in sections if t.startswith("modinfo -F ")]
    assert "signature" in fields and "parm" in fields
    for field in fields:
        status, out = run_info(capsysbinary, "-F", field, str(path))
        assert status == 0
        assert out == sections[f"modinfo -F {field} FILE"], field


@pytest.mark.parametrize("path", MODULES, ids=IDS)
def test_info_json_symbols_versions_and_signer_equal_recorded_tools(
        path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    sections = expected(path)
    status, out = run_info(capsysbinary, "--json", "--no-cache", str(path))
    assert status == 0
    doc = json.loads(out)[0]
    # kmod's modprobe --dump-modversions: every __versions entry, in file order
    dumped = [line.split("\t") for line in sections["modprobe --dump-modversions FILE"].splitlines()]
    assert [[name, crc] for name, crc in doc["versions"].items()] == [[name, crc] for crc, name in dumped]
    # binutils: undefined symbols (nm -u), exports and their licence (the __ksymtab_ symbol's section)
    assert doc["undefined"] == sorted(line.split()[-1] for line in sections["nm -u FILE"].splitlines())
    ksymtab = {}
    for line in sections["objdump -t FILE | grep ' __ksymtab_'"].splitlines():
        section, name = line.split()[-3], line.split()[-1]
        if section in ("__ksymtab", "__ksymtab_gpl") and name.startswith("__ksymtab_"):  # not arm's $d
            ksymtab[name.removeprefix("__ksymtab_")] = section == "__ksymtab_gpl"
    assert {e["name"]: e["gpl_only"] for e in doc["exports"]} == ksymtab
    assert bool(ksymtab) == path.name.startswith(("stp.", "llc."))  # stp exports GPL symbols, llc plain ones
    # modinfo's sig_key is the signer's key id
    sig_key = sections["modinfo -F sig_key FILE"].strip().replace(":", "").lower()
    assert doc["signature"]["key_id"] == sig_key
    assert doc["modinfo"]["vermagic"] == sections["modinfo -F vermagic FILE"].rstrip("\n")


def _tree(root: Path, arch: str) -> str:
    """A tiny module tree of one architecture's modules under ROOT; returns its kernel release."""
    mods = [p for p in MODULES if p.parent.name == arch]
    release = expected(mods[0])["modinfo -F vermagic FILE"].split()[0]
    places = {"stp": "kernel/net/802", "llc": "kernel/net/llc", "dummy": "kernel/drivers/net"}
    for path in mods:
        dest = root / "lib" / "modules" / release / places[path.name.split(".")[0]]
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest / path.name)
    return release


@pytest.mark.parametrize("arch", ARCHES)
def test_index_of_a_tiny_tree_equals_live_depmod(arch: str, tmp_path: Path) -> None:
    depmod = shutil.which("depmod") or shutil.which("/usr/sbin/depmod") or shutil.which("/sbin/depmod")
    if depmod is None:
        need("kmod's depmod")
    assert depmod is not None
    config = tmp_path / "depmod.d"  # no configuration: neither tool reads the machine's /etc/depmod.d
    config.mkdir()
    theirs, ours = tmp_path / "depmod", tmp_path / "kmodkit"
    release = _tree(theirs, arch)
    _tree(ours, arch)
    subprocess.run([depmod, "-C", str(config), "-b", str(theirs), release], check=True, capture_output=True)
    done = subprocess.run([*KMODKIT, "index", "-C", str(config), "-b", str(ours), release],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    want, got = theirs / "lib/modules" / release, ours / "lib/modules" / release
    for name in INDEX_FILES:
        assert (got / name).read_bytes() == (want / name).read_bytes(), name
    # stp's dependency on llc made it into the index, whatever the class and byte order
    assert re.search(rb"^kernel/net/802/stp\.ko(\.xz)?: kernel/net/llc/llc\.ko", (got / "modules.dep").read_bytes(),
                     re.M)
