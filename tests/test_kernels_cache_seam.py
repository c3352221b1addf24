"""The seam that finds a fetched kernel (kernels.kernel) and the cache it lives in, without the network.

The kernel directories here are fakes made in the test (named ``fake``): a cache entry laid out as
``kmodkit kernels fetch`` lays one out, with the absolute build link Debian's headers package ships.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kmodkit.archive import store
from kmodkit.archive.fetch import fix_headers_makefiles
from kmodkit.archive.tool import _depends, tools
from kmodkit.errors import NotFoundError
from kmodkit.index.lookup import kernel_dir
from kmodkit.kbuild import kernels
from kmodkit.kimage import image_for_release
from kmodkit.sysroot import HOST
from conftest import need


def _fake_fetched(release: str, packages: tuple[str, ...] = (), image: bool = True) -> Path:
    """A fake fetched kernel in the test's cache: headers (absolute build link), an image, a record."""
    root = store.roots_dir() / release
    headers = root / "usr/src" / f"linux-headers-{release}"
    headers.mkdir(parents=True)
    for name in kernels.HEADER_FILES:
        (headers / name).write_text(f"# fake {name}\n")
    moddir = root / "lib/modules" / release
    moddir.mkdir(parents=True)
    os.symlink(f"/usr/src/linux-headers-{release}", moddir / "build")
    if image:
        (root / "boot").mkdir()
        (root / "boot" / f"vmlinuz-{release}").write_bytes(b"fake image")
    kernel = store.FetchedKernel(release, root, True, image, tuple((p, "1", p + ".deb") for p in packages), 1234,
                                 "debian")
    (root / store.RECORD).write_text(json.dumps(kernel.to_json()))
    store.packages_dir().mkdir(parents=True, exist_ok=True)
    for p in packages:
        (store.packages_dir() / f"{p}.deb").write_bytes(b"x" * 1000)
    return root


def test_a_fetched_fake_kernel_is_found_through_the_one_seam() -> None:
    release = "9.9.9-1-cloud-amd64"
    root = _fake_fetched(release)
    k = kernels.kernel(release)
    assert k.fetched and k.root.path == root
    # the absolute build link is re-rooted into the cache, not followed to this machine's /usr/src
    assert k.headers == root / "usr/src" / f"linux-headers-{release}" and k.headers_complete
    assert kernels.kernel_root(release).path == root
    assert kernel_dir(release, None) == f"{root}/lib/modules/{release}"
    assert image_for_release(release) == str(root / "boot" / f"vmlinuz-{release}")
    # a release neither installed nor fetched stays this machine's, with everything missing
    other = kernels.kernel("9.9.9-2-cloud-amd64")
    assert not other.fetched and other.root is HOST and other.headers is None
    with pytest.raises(NotFoundError):
        image_for_release("9.9.9-2-cloud-amd64")


def test_an_installed_kernel_wins_over_a_fetched_one_of_the_same_release() -> None:
    installed = [p.name for p in Path("/lib/modules").iterdir() if p.is_dir()] if Path("/lib/modules").is_dir() else []
    if not installed:
        need("a kernel under /lib/modules")
    _fake_fetched(installed[0])
    k = kernels.kernel(installed[0])
    assert not k.fetched and k.root is HOST and k.moddir == Path("/lib/modules") / installed[0]
    assert kernel_dir(installed[0], None) == f"/lib/modules/{installed[0]}"


def test_the_rewritten_include_reads_the_sibling_common_makefile_wherever_the_tree_is(tmp_path: Path) -> None:
    root = tmp_path / "tmp-name"
    flavour, common = root / "usr/src/linux-headers-9.9-fake", root / "usr/src/linux-headers-9.9-common"
    flavour.mkdir(parents=True)
    common.mkdir(parents=True)
    (flavour / "Makefile").write_text("include /usr/src/linux-headers-9.9-common/Makefile\n")
    (common / "Makefile").write_text("all:\n\t@echo from-the-unpacked-common\n")
    # an include of a directory the packages did not bring is left as it is
    (root / "usr/src/other").mkdir()
    (root / "usr/src/other/Makefile").write_text("include /usr/src/absent/Makefile\n")
    assert fix_headers_makefiles(root) == [flavour / "Makefile"]
    assert (root / "usr/src/other/Makefile").read_text() == "include /usr/src/absent/Makefile\n"
    moved = tmp_path / "final-name"
    root.rename(moved)  # the temp directory is renamed into place after the rewrite
    done = subprocess.run(["make", "-s", "-C", str(moved / "usr/src/linux-headers-9.9-fake")],
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "from-the-unpacked-common", done.stderr


def test_prune_removes_a_kernel_and_only_the_package_files_no_other_kernel_uses() -> None:
    _fake_fetched("9.9.9-1-amd64", ("linux-headers-9.9.9-1-amd64", "linux-kbuild-9.9"))
    _fake_fetched("9.9.9-2-amd64", ("linux-headers-9.9.9-2-amd64", "linux-kbuild-9.9"))
    done = store.prune(["9.9.9-1-amd64"])
    assert done.releases == ("9.9.9-1-amd64",) and done.packages == ("linux-headers-9.9.9-1-amd64.deb",)
    assert done.freed >= 1000 + len("fake image")
    assert [k.release for k in store.fetched_kernels()] == ["9.9.9-2-amd64"]
    assert (store.packages_dir() / "linux-kbuild-9.9.deb").is_file()
    with pytest.raises(NotFoundError, match="not a fetched kernel"):
        store.prune(["9.9.9-1-amd64"])
    assert store.prune(None).releases == ("9.9.9-2-amd64",) and not list(store.packages_dir().iterdir())


def test_a_dead_fetchs_temp_directory_is_swept_and_a_live_ones_is_kept() -> None:
    store.roots_dir().mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = store.roots_dir() / f".9.9.kmodkit-{dead.pid}-0.tmp"
    live = store.roots_dir() / f".9.9.kmodkit-{os.getppid()}-0.tmp"
    for d in (stale, live):
        (d / "usr").mkdir(parents=True)
        (d / "usr/file").write_bytes(b"y" * 100)
    assert store.sweep_temps() >= 100
    assert not stale.exists() and live.exists()
    assert store.fetched_kernels() == []  # a temp directory is never a kernel


def test_the_archive_tables_dependency_rules() -> None:
    debian = tools()["debian"]
    assert debian.tested and not tools()["fedora"].tested
    assert debian.release_of("linux-headers-6.1.0-55-cloud-amd64") == ("headers", "6.1.0-55-cloud-amd64")
    assert debian.release_of("linux-image-6.12.113+deb12-amd64") == ("image", "6.12.113+deb12-amd64")
    for not_a_kernel in ("linux-headers-6.1.0-55-common", "linux-headers-6.12-amd64", "linux-image-6.1.0-55-amd64-dbg",
                         "linux-image-6.1.0-55-amd64-unsigned", "linux-headers-6.1.0-55-common-rt"):
        assert debian.release_of(not_a_kernel) is None, not_a_kernel
    # the Depends line of Debian's linux-headers-6.12.113+deb12-cloud-amd64, as apt-cache show prints it
    deps = _depends("linux-base (>= 4.12~), linux-headers-6.12.113+deb12-common (= 6.12.113-1~deb12u1), "
                    "linux-image-6.12.113+deb12-cloud-amd64 (= 6.12.113-1~deb12u1) | "
                    "linux-image-6.12.113+deb12-cloud-amd64-unsigned (= 6.12.113-1~deb12u1), "
                    "linux-kbuild-6.12.113+deb12, gcc-12")
    assert deps[1] == (("linux-headers-6.12.113+deb12-common", "6.12.113-1~deb12u1"),)
    assert deps[3] == (("linux-kbuild-6.12.113+deb12", None),)
    fetched = [d for alts in deps for d, _ in alts if d.startswith(debian.fetch_depends)]
    assert fetched == ["linux-headers-6.12.113+deb12-common", "linux-kbuild-6.12.113+deb12"]


def test_vm_run_of_a_kernel_fetched_without_its_image_says_how_to_fetch_it() -> None:
    release = "9.9.9-3-cloud-amd64"
    _fake_fetched(release, image=False)
    done = subprocess.run([sys.executable, "-m", "kmodkit", "vm", "run", "-k", release, "--", "true"],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr == (f"error: {release}: was fetched without its image and modules (--headers-only); "
                           f"fetch them: kmodkit kernels fetch {release}\n")
