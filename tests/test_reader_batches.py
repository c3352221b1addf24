"""One module reader, one verdict: batches of good and bad files through info and index.

The corrupt files are real signed Debian modules with one header field changed in the
test (names say "made_in_test"); kmod's modinfo and depmod are the oracles.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import KernelTree

KMODKIT = [sys.executable, "-m", "kmodkit"]


def run(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KMODKIT, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, check=False)


def _patched(raw: bytes, offset: int, value: bytes) -> bytes:
    data = bytearray(raw)
    data[offset:offset + len(value)] = value
    return bytes(data)


# ELF64 header offsets of the fields changed below
E_TYPE, E_SHOFF, E_SHENTSIZE = 16, 40, 58


@pytest.fixture()
def batch(tmp_path: Path, sample_module: Path, generic_tree: KernelTree) -> tuple[list[Path], list[Path]]:
    """Good and bad copies of real signed modules, interleaved: (good, bad)."""
    raw = sample_module.read_bytes()
    assert raw.endswith(b"~Module signature appended~\n")  # the failing case needs a signed module
    other = next(p for p in generic_tree.modules() if p.name == "xfrm_algo.ko")
    files = {
        "af_key.ko": raw,
        "bad_shentsize_made_in_test.ko": _patched(raw, E_SHENTSIZE, b"\x28\x00"),
        "etype_exec_made_in_test.ko": _patched(raw, E_TYPE, b"\x02"),  # kmod reads it: so does kmodkit
        "bad_shoff_made_in_test.ko": _patched(raw, E_SHOFF, b"\xff\xff\xff\x00"),
        "xfrm_algo.ko": other.read_bytes(),
    }
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)
    good = [p for p in paths if "bad_" not in p.name]
    bad = [p for p in paths if "bad_" in p.name]
    return good, bad


def _error_lines(stderr: str, bad: list[Path]) -> None:
    assert "Traceback" not in stderr and "BufferError" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == len(bad), stderr
    for line, path in zip(lines, bad):
        assert line.startswith(f"error: {path}: "), line


@pytest.mark.kernel
def test_signed_modules_failing_an_elf_check_do_not_stop_info_made_in_test(
        batch: tuple[list[Path], list[Path]], tmp_path: Path) -> None:
    """Issue 10 item 1: a signed module failing an ELF check made closing the mmap raise BufferError
    (exit 4, the rest of the batch lost).  Every view of info reports every good file and one line per bad one."""
    good, bad = batch
    files = [str(p) for p in (good[0], bad[0], good[1], bad[1], good[2])]

    text = run("info", *files)
    assert text.returncode == 2
    assert text.stdout.count("filename:") == len(good)
    _error_lines(text.stderr, bad)

    field = run("info", "-F", "vermagic", *files)
    assert field.returncode == 2 and len(field.stdout.splitlines()) == len(good)
    _error_lines(field.stderr, bad)

    for cache in ([], ["--no-cache"]):
        js = run("info", "--json", *cache, *files)
        assert js.returncode == 2, js.stderr
        docs = json.loads(js.stdout)  # with --json the bad items are error records in the list, where they stood
        assert [d["filename"] for d in docs if "error" not in d] == [str(p) for p in good]
        assert [d["path"] for d in docs if "error" in d] == [str(p) for p in bad] and not js.stderr

    for target in (bad[0], bad[1]):  # one target alone takes its own path through the CLI
        one = run("info", "--json", str(target))
        assert one.returncode == 2 and json.loads(one.stdout)["error"]["what"] == str(target) and not one.stderr

    summary = run("info", "--summary", "--json", *files)
    assert summary.returncode == 1, summary.stderr
    doc = json.loads(summary.stdout)
    assert doc["modules"] == len(good)
    assert [e["path"] for e in doc["errors"]] == [str(p) for p in bad]


@pytest.mark.kernel
def test_index_agrees_with_info_and_depmod_made_in_test(batch: tuple[list[Path], list[Path]], tmp_path: Path) -> None:
    """Issue 10 items 1 and 13: the index reads what info reads and refuses what info refuses, with one
    error line each, and writes what depmod writes for the same tree (it exited 4 and wrote nothing)."""
    good, bad = batch
    trees = []
    for name in ("mine", "theirs"):
        kdir = tmp_path / name / "lib/modules/1.0-test"
        (kdir / "kernel").mkdir(parents=True)
        for p in good + bad:
            shutil.copy(p, kdir / "kernel" / p.name)
        trees.append(kdir)
    mine = run("index", "-b", str(tmp_path / "mine"), "1.0-test")
    assert mine.returncode != 4 and "Traceback" not in mine.stderr
    refused = sorted(line.split(": ")[1] for line in mine.stderr.splitlines() if line.startswith("error: "))
    assert refused == sorted(str(trees[0] / "kernel" / p.name) for p in bad)
    info = run("info", *(str(trees[0] / "kernel" / p.name) for p in good + bad))
    assert sorted(line.split(": ")[1] for line in info.stderr.splitlines()) == refused

    theirs = subprocess.run(["depmod", "-b", str(tmp_path / "theirs"), "1.0-test"], capture_output=True, text=True)
    assert theirs.returncode == 0, theirs.stderr
    assert theirs.stderr.count("failed to load symbols") == len(bad)
    for f in sorted(trees[1].glob("modules.*")):
        assert (trees[0] / f.name).read_bytes() == f.read_bytes(), f.name


@pytest.mark.kernel
def test_fifo_and_dev_zero_are_refused_at_once(tmp_path: Path, sample_module: Path) -> None:
    """Issue 10 item 6: a FIFO named x.ko hung info; a .ko symlink to /dev/zero was read without end.
    Both are refused before a byte is read, one line each, and the good file around them is printed."""
    fifo = tmp_path / "fifo.ko"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.ko"
    zero.symlink_to("/dev/zero")
    r = run("info", str(fifo), str(sample_module), str(zero), timeout=60)
    assert r.returncode == 2
    assert r.stdout.count("filename:") == 1
    assert r.stderr.splitlines() == [
        f"error: {fifo}: is a FIFO, not a regular file (a module file): refused without reading it",
        f"error: {zero}: is a character device, not a regular file (a module file): refused without reading it",
    ]
    # modinfo refuses them at once too (it takes them for module names it cannot find)
    theirs = subprocess.run(["modinfo", str(fifo), str(zero)], capture_output=True, text=True, timeout=60)
    assert theirs.returncode != 0


def test_opener_refuses_special_files_without_blocking(tmp_path: Path) -> None:
    """The one opener, which every reader (and signing) can use: a FIFO with no writer does not block."""
    from kmodkit.errors import UserError
    from kmodkit.modfile.opener import load_module, open_regular

    fifo = tmp_path / "x.ko"
    os.mkfifo(fifo)
    for opener in (open_regular, load_module):
        with pytest.raises(UserError, match="is a FIFO"):
            opener(str(fifo))
    with pytest.raises(UserError, match="is a character device"):
        open_regular("/dev/zero")
    with pytest.raises(UserError, match="is a directory"):
        open_regular(str(tmp_path))
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    fd, st = open_regular(str(plain))
    try:
        assert os.get_blocking(fd) and st.st_size == 1
    finally:
        os.close(fd)


def test_the_index_imports_only_the_reader_it_needs() -> None:
    """The scan reads through the one reader without importing all of modfile (why copies existed)."""
    code = ("import sys, kmodkit.index.scan, kmodkit.modfile; "
            "print(sorted(m for m in sys.modules if m.startswith('kmodkit.modfile')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['kmodkit.modfile', 'kmodkit.modfile.elf', 'kmodkit.modfile.opener']"


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("keys")
    r = run("keys", "new", "--out", str(out), "--bits", "2048", "--cn", "special files test")
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.kernel
@pytest.mark.parametrize("command", ["verify", "sign"])
def test_fifo_and_dev_zero_are_refused_at_once_by_sign_and_verify(
        command: str, tmp_path: Path, sample_module: Path, keydir: Path) -> None:
    """Issue 10 item 6 for the signing commands: one line for each special file (named as given), the good
    file done, no hang and no MemoryError."""
    fifo = tmp_path / "fifo.ko"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.ko"
    zero.symlink_to("/dev/zero")
    good = tmp_path / "af_key.ko"
    shutil.copy(sample_module, good)
    key = ["--key", str(keydir / "signing_key.pem"), "--replace"] if command == "sign" else []
    try:
        r = run(command, *key, "--cert", str(keydir / "signing_cert.der"), str(fifo), str(good), str(zero),
                timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{command} hangs on a FIFO")
    assert r.returncode not in (0, 4) and "Traceback" not in r.stderr and "MemoryError" not in r.stderr
    lines = (r.stdout + r.stderr).splitlines()
    # one line for each special file, naming it as given and saying what it is
    assert len([ln for ln in lines if "FIFO" in ln and "fifo.ko" in ln]) == 1, lines
    assert len([ln for ln in lines if "character device" in ln and "zero.ko" in ln]) == 1, lines
    # the good file between them was done
    done = [ln for ln in lines if "af_key.ko" in ln]
    assert done and not any(ln.startswith("error:") for ln in done), lines


def test_the_module_name_rule_has_one_home() -> None:
    """Issue 9: the rule ('-' as '_', basename up to the first dot) was spelt in seven places; it lives in
    kmodkit.modfile.modname and everything else calls it (alias normalisation in index/glob.py is another rule)."""
    src = Path(__file__).resolve().parents[1] / "src" / "kmodkit"
    spelt = [str(p.relative_to(src)) for p in src.rglob("*.py")
             if 'replace("-", "_")' in p.read_text() and p.name not in ("modname.py", "glob.py")]
    assert spelt == []


def test_the_signature_trailer_layout_has_one_reader() -> None:
    """Issue 9: three readers of struct module_signature; modfile/signature.py is now the only one that unpacks it
    (the kernel model and sign ask it for the fields and for the bytes to append)."""
    src = Path(__file__).resolve().parents[1] / "src" / "kmodkit"
    layouts = [str(p.relative_to(src)) for p in src.rglob("*.py")
               if ">BBBBB3" in p.read_text() and p.name != "signature.py"]
    assert layouts == []
