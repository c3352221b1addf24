"""The guest's initramfs against GNU cpio (the oracle), and the PVH kernel image, without booting."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import KernelTree, need
from kmodkit.vm.initramfs import GuestCommand, Share, build_initramfs, init_script
from kmodkit.vm.kernel_image import boot_image

pytestmark = pytest.mark.kernel

CMD = GuestCommand(("sh", "-c", "echo 'it''s'; exit 3"), "/", (("PATH", "/usr/bin:/bin"),))


def _cpio_list(data: bytes, tmp_path: Path) -> list[str]:
    if shutil.which("cpio") is None:
        need("GNU cpio")
    done = subprocess.run(["cpio", "-it", "--quiet"], input=data, capture_output=True, check=True)
    return done.stdout.decode().split()


def test_cloud_initramfs_has_virtiofs_modules_uncompressed(xz_tree: KernelTree, tmp_path: Path) -> None:
    data = build_initramfs(str(xz_tree.moddir), Share.VIRTIOFS, CMD)
    names = _cpio_list(data, tmp_path)
    assert {"init", "bin/busybox", "dev/console"} <= set(names)
    # extract and check the modules are plain ELF (the guest's busybox insmod cannot decompress)
    subprocess.run(["cpio", "-id", "--quiet"], input=data, cwd=tmp_path, check=True)
    mods = sorted(p.name for p in (tmp_path / "lib/kmodkit").iterdir())
    assert mods and all((tmp_path / "lib/kmodkit" / m).read_bytes()[:4] == b"\x7fELF" for m in mods)
    assert os.access(tmp_path / "init", os.X_OK)


def test_generic_initramfs_for_9p_loads_dependencies_first(generic_tree: KernelTree, tmp_path: Path) -> None:
    data = build_initramfs(str(generic_tree.moddir), Share.NINEP, CMD)
    subprocess.run(["cpio", "-id", "--quiet"], input=data, cwd=tmp_path, check=True)
    init = (tmp_path / "init").read_text()
    order = init.split("for m in ", 1)[1].split(";", 1)[0].split()
    assert order.index("9pnet") < order.index("9pnet_virtio") < order.index("9p")
    assert order.index("virtio_ring") < order.index("virtio_pci")


def test_init_script_quotes_the_command() -> None:
    text = init_script([], Share.VIRTIOFS, CMD)
    line = next(l for l in text.splitlines() if l.strip().startswith("sh /"))
    words = line.strip().split(" > /dev/")[0]
    # the shell itself (the oracle) splits the line back into the exact argv
    done = subprocess.run(["sh", "-c", f"printf '%s\\0' {words}"], capture_output=True, check=True)
    assert done.stdout.split(b"\0")[:-1] == [b"sh", b"/", *(a.encode() for a in CMD.argv)]


def test_pvh_image_is_the_uncompressed_elf(generic_tree: KernelTree, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    if generic_tree.vmlinuz is None:
        pytest.skip("no kernel image")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    image = boot_image(str(generic_tree.vmlinuz), f"/boot/config-{generic_tree.release}")
    assert image != str(generic_tree.vmlinuz)
    with open(image, "rb") as f:
        assert f.read(4) == b"\x7fELF"
    assert boot_image(str(generic_tree.vmlinuz), str(tmp_path / "no-config")) == str(generic_tree.vmlinuz)
