"""The one kernel-image reader (kmodkit.kimage) and its two users: `keys extract` / `verify --vmlinuz` (the
kernel's certificates) and `vm run` (the PVH vmlinux it boots).  Bombs and corrupt images are made in the
tests (a minimal bzImage setup header around a payload); the real images are Debian's /boot/vmlinuz-*.
"""

from __future__ import annotations

import lzma
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import KernelTree, discover_trees, need
from kmodkit.errors import ModuleFormatError, UserError
from kmodkit.kimage import read_vmlinux

KMODKIT = [sys.executable, "-m", "kmodkit"]


def _bzimage(payload: bytes, declared: int) -> bytes:
    """A bzImage as the x86 boot protocol lays it out: one setup sector after the boot sector, the 'HdrS'
    header (protocol 2.15) with payload_offset / payload_length, the payload and its declared size."""
    setup = bytearray(2 * 512)
    setup[0x1F1] = 1  # setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x020F)
    body = payload + struct.pack("<I", declared)
    struct.pack_into("<II", setup, 0x248, 0, len(body))
    return bytes(setup) + body


def _elf_like(size: int) -> bytes:
    return b"\x7fELF" + b"\0" * (size - 4)


@pytest.fixture
def bomb(tmp_path: Path) -> Path:
    """made in test: an xz payload that declares 1 MiB and decompresses to 32 MiB."""
    path = tmp_path / "vmlinuz-bomb"
    path.write_bytes(_bzimage(lzma.compress(_elf_like(32 << 20), preset=0), 1 << 20))
    return path


def test_a_payload_past_its_declared_size_is_refused_made_in_test(bomb: Path) -> None:
    with pytest.raises(ModuleFormatError, match="decompression bomb") as exc:
        read_vmlinux(str(bomb))
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("fmt", ["xz", "lzma", "bzip2"])
def test_a_payload_past_the_cap_is_refused_whatever_it_declares_made_in_test(tmp_path: Path, fmt: str) -> None:
    data = _elf_like(8 << 20)
    payload = {"xz": lambda: lzma.compress(data, preset=0),
               "lzma": lambda: lzma.compress(data, format=lzma.FORMAT_ALONE, preset=0),
               "bzip2": lambda: __import__("bz2").compress(data, 1)}[fmt]()
    path = tmp_path / "vmlinuz"
    path.write_bytes(_bzimage(payload, 0xFFFFFFFF))
    with pytest.raises(ModuleFormatError, match="decompression bomb"):
        read_vmlinux(str(path), limit=4 << 20)
    # within the cap, the same image reads back whole
    image, vmlinux = read_vmlinux(str(path), limit=16 << 20)
    assert image.payload_format == fmt and vmlinux == data


def test_an_image_that_is_not_a_regular_file_is_refused_at_once_made_in_test(tmp_path: Path) -> None:
    fifo = tmp_path / "vmlinuz-fifo"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="not a regular file"):
        read_vmlinux(str(fifo))  # O_NONBLOCK: no writer, and still no hang


@pytest.mark.parametrize("command", [["keys", "extract"], ["verify"]])
def test_keys_and_verify_refuse_the_bomb_with_one_error_line_made_in_test(bomb: Path, tmp_path: Path,
                                                                          command: list[str]) -> None:
    module = tmp_path / "any.ko"
    module.write_bytes(b"")  # never read: the kernel's keys are read first
    extra = ["--out", str(tmp_path / "out")] if command[0] == "keys" else [str(module)]
    done = subprocess.run([*KMODKIT, *command, "--vmlinuz", str(bomb), *extra], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bomb}: ") and "decompression bomb" in lines[0]


def _fake_boot(tmp_path: Path, image: bytes) -> tuple[str, str]:
    """made in test: a /boot with vmlinuz-K (``image``) and a config with CONFIG_PVH=y, and an empty module tree."""
    boot, mods = tmp_path / "boot", tmp_path / "modules"
    boot.mkdir()
    (mods / "k").mkdir(parents=True)
    (boot / "vmlinuz-k").write_bytes(image)
    (boot / "config-k").write_text("CONFIG_PVH=y\n")
    return str(boot), str(mods)


def test_vm_run_refuses_the_bomb_before_anything_starts_made_in_test(bomb: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from kmodkit.vm.machine import Vm, VmSpec

    if shutil.which("qemu-system-x86_64") is None:
        need("qemu-system-x86 is not installed")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    boot, mods = _fake_boot(tmp_path, bomb.read_bytes())
    spec = VmSpec("k", ("true",), runs_dir=str(tmp_path / "runs"), boot_dir=boot, modules_root=mods)
    with pytest.raises(ModuleFormatError, match="decompression bomb") as exc:
        Vm(spec).run()
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "runs").exists()  # refused before a run directory, virtiofsd or qemu
    assert not (tmp_path / "cache").exists()


def _declared_size(image: bytes) -> int:
    setup_sects = image[0x1F1] or 4
    offset, length = struct.unpack_from("<II", image, 0x248)
    end = (setup_sects + 1) * 512 + offset + length
    return int(struct.unpack_from("<I", image, end - 4)[0])


@pytest.mark.kernel
@pytest.mark.parametrize("tree", [t for t in discover_trees() if t.vmlinuz is not None] or [None],
                         ids=lambda t: t.release if t else "none")
def test_real_images_give_the_vmlinux_their_build_declared_to_both_users(tree: KernelTree | None, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from kmodkit.vm.kernel_image import boot_image

    if tree is None or tree.vmlinuz is None:
        need("a kernel image under /boot")
    raw = tree.vmlinuz.read_bytes()
    image, vmlinux = read_vmlinux(str(tree.vmlinuz))
    # the build wrote the vmlinux's size after the payload (size_append); GNU readelf is the ELF oracle
    assert image.vmlinux_size == len(vmlinux) == _declared_size(raw)
    elf = tmp_path / "vmlinux"
    elf.write_bytes(vmlinux)
    header = subprocess.run(["readelf", "-h", str(elf)], capture_output=True, text=True, check=True).stdout
    assert "EXEC (Executable file)" in header and "X86-64" in header
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    booted = boot_image(str(tree.vmlinuz), f"/boot/config-{tree.release}")
    assert booted != str(tree.vmlinuz) and Path(booted).read_bytes() == vmlinux
