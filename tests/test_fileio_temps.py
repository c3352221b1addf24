"""fileio: temp files say whose they are, stale ones go, and a set of files is replaced as one."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from kmodkit import fileio
from kmodkit.errors import EnvironmentNotReady, UserError


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_temp_names_are_recognisable_and_never_module_names(tmp_path: Path) -> None:
    name = os.path.basename(fileio.write_temp(str(tmp_path / "x.ko"), b"data", 0o644))
    assert fileio.is_temp_name(name) and str(os.getpid()) in name and not name.endswith(".ko")
    for other in ("x.ko", ".x.ko", ".x.ko.123.4.tmp", "x.ko.kmodkit-1-2.tmp", ".x.kmodkit-12-3.tmp.ko"):
        assert not fileio.is_temp_name(other), other


def test_first_write_into_a_directory_removes_temps_of_dead_processes_only(tmp_path: Path) -> None:
    dead = dead_pid()
    stale = tmp_path / f".af_key.ko.kmodkit-{dead}-0.tmp"
    live = tmp_path / f".af_key.ko.kmodkit-{os.getppid()}-0.tmp"  # our parent is alive
    lookalikes = [tmp_path / f".af_key.ko.{dead}.0.tmp", tmp_path / f"af_key.ko.kmodkit-{dead}-0.tmp",
                  tmp_path / f".af_key.ko.kmodkit-{dead}-0.tmp.keep"]
    for p in [stale, live, *lookalikes]:
        p.write_bytes(b"x" * 100)
    fileio.write_atomic(tmp_path / "af_key.ko", b"new", durable=False)
    assert not stale.exists()
    assert live.exists() and all(p.exists() for p in lookalikes)
    assert (tmp_path / "af_key.ko").read_bytes() == b"new"


def test_commit_files_replaces_the_set_and_leaves_no_journal(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"old a")
    fileio.commit_files(str(tmp_path), {"a": b"new a", "key.pem": b"secret"}, mode={"key.pem": 0o600})
    assert sorted(os.listdir(tmp_path)) == ["a", "key.pem"]
    assert (tmp_path / "a").read_bytes() == b"new a" and (tmp_path / "key.pem").read_bytes() == b"secret"
    assert (tmp_path / "key.pem").stat().st_mode & 0o777 == 0o600 and (tmp_path / "a").stat().st_mode & 0o777 == 0o644


def _half_done_commit(directory: Path, pid: int) -> None:
    # what a process killed in the middle of commit_files' renames leaves (reality cannot stop it
    # at that exact point on demand): a journal, one target renamed already, one temp still waiting
    (directory / "modules.dep").write_bytes(b"new dep")
    (directory / "modules.dep.bin").write_bytes(b"old bin")
    temp = f".modules.dep.bin.kmodkit-{pid}-7.tmp"
    (directory / temp).write_bytes(b"new bin")
    pairs = [(f".modules.dep.kmodkit-{pid}-6.tmp", "modules.dep"), (temp, "modules.dep.bin")]
    body = b"".join(t.encode() + b"\0" + n.encode() + b"\0" for t, n in pairs)
    (directory / fileio.JOURNAL_NAME).write_bytes(b"kmodkit commit 1\n%d\n" % pid + body)


def test_fake_half_done_commit_of_a_dead_process_is_rolled_forward_by_the_next_write(tmp_path: Path) -> None:
    _half_done_commit(tmp_path, dead_pid())
    fileio.write_atomic(tmp_path / "modules.cache", b"c", durable=False)  # any later write into the directory
    assert (tmp_path / "modules.dep.bin").read_bytes() == b"new bin"
    assert sorted(os.listdir(tmp_path)) == ["modules.cache", "modules.dep", "modules.dep.bin"]


def test_fake_half_done_commit_of_a_live_process_is_left_to_it(tmp_path: Path) -> None:
    _half_done_commit(tmp_path, os.getppid())
    assert fileio.finish_commit(str(tmp_path)) is False
    assert (tmp_path / "modules.dep.bin").read_bytes() == b"old bin"
    with pytest.raises(UserError, match="another kmodkit process"):
        fileio.commit_files(str(tmp_path), {"modules.dep": b"x"})
    assert (tmp_path / "modules.dep").read_bytes() == b"new dep"


def test_fake_journal_naming_files_elsewhere_is_refused(tmp_path: Path) -> None:
    (tmp_path / fileio.JOURNAL_NAME).write_bytes(b"kmodkit commit 1\n%d\n../../etc/passwd\0x\0" % dead_pid())
    with pytest.raises(UserError, match="outside its directory"):
        fileio.finish_commit(str(tmp_path))


def test_fake_half_done_commit_a_user_cannot_finish_makes_readers_refuse() -> None:
    import shutil
    import tempfile

    from kmodkit.index.lookup import ModuleTree

    # a directory the reader may read but not write: root's, read by `nobody` in a forked child
    # (as root the test itself could write anywhere), or a read-only one when not root
    directory = Path(tempfile.mkdtemp(prefix="kmodkit-ro-"))
    try:
        _half_done_commit(directory, dead_pid())
        directory.chmod(0o755 if os.geteuid() == 0 else 0o555)
        pid = os.fork()
        if pid == 0:  # the child: exit 0 only when the reader refuses with the expected error
            status = 1
            try:
                if os.geteuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)
                ModuleTree(str(directory))
            except EnvironmentNotReady as exc:
                status = 0 if "half replaced" in str(exc) else 2
            except BaseException:
                status = 3
            os._exit(status)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert (directory / "modules.dep.bin").read_bytes() == b"old bin"  # left for a user who may write it
    finally:
        directory.chmod(0o755)
        shutil.rmtree(directory)


def test_fake_half_done_index_commit_is_finished_before_a_reader_opens_the_tree(tmp_path: Path) -> None:
    from kmodkit.index.lookup import ModuleTree

    _half_done_commit(tmp_path, dead_pid())
    ModuleTree(str(tmp_path))
    assert (tmp_path / "modules.dep.bin").read_bytes() == b"new bin"
    assert not (tmp_path / fileio.JOURNAL_NAME).exists()


@pytest.mark.kernel
def test_walkers_skip_the_temp_copies_a_killed_run_leaves(sample_module: Path, tmp_path: Path) -> None:
    # a killed sign leaves a full-size copy of the module under a temp name; `find -name '*.ko*'`
    # matches it, the walkers must not: temp names end in .tmp, which no module suffix matches
    from kmodkit.index.indexer import Indexer
    from kmodkit.modfile.summary import tree_modules
    from kmodkit.signing.sign import find_modules

    moddir = tmp_path / "lib" / "modules" / "6.1.0-kmodkit-test"
    (moddir / "kernel").mkdir(parents=True)
    module = moddir / "kernel" / sample_module.name
    module.write_bytes(sample_module.read_bytes())
    temp = fileio.write_temp(str(module), sample_module.read_bytes(), 0o644)
    assert fileio.is_temp_name(temp)
    assert find_modules([str(moddir)]) == tree_modules(str(moddir)) == [str(module)]
    _result, files = Indexer(moddir.name, str(tmp_path), outdir=str(tmp_path / "out"), use_cache=False).rebuild()
    assert files["modules.dep"].decode().splitlines() == [f"kernel/{sample_module.name}:"]


def test_temps_of_a_zombie_are_stale(tmp_path: Path) -> None:
    # a SIGKILLed worker is a zombie until its reaper gets to it; it will never rename its temp
    proc = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # exited, not yet reaped: a zombie
        with open(f"/proc/{proc.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.01)
    try:
        stale = tmp_path / f".m.ko.kmodkit-{proc.pid}-0.tmp"
        stale.write_bytes(b"x")
        assert fileio.remove_stale_temps(str(tmp_path)) == [stale.name]
    finally:
        proc.wait()
