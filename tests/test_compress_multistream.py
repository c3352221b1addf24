"""Modules compressed as several xz streams, zstd frames or gzip members are read and re-signed whole.

The files are made here with the real xz, zstd and gzip tools from a real
module (its content cut in two, each half compressed, the results
concatenated: ``made_in_test``); kmod's modinfo (which reads every stream)
and the tools' own decompression are the oracles.  Debian 12's kmod is built
without zlib, so for gzip the oracle is ``gzip -dc`` alone.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import need
from kmodkit.cli.main import main
from kmodkit.errors import ModuleFormatError
from kmodkit.modfile import ModuleFile
from kmodkit.modfile.compress import Compression, decompress
from kmodkit.modfile.signature import MAGIC
from kmodkit.signing.sign import strip_signatures

TOOLS = {"xz": ["xz", "--check=crc32", "-c"], "zst": ["zstd", "-q", "-c"], "gz": ["gzip", "-n", "-c"]}
KINDS = {"xz": Compression.XZ, "zst": Compression.ZSTD, "gz": Compression.GZIP}


@pytest.fixture(scope="module")
def content(sample_module: Path) -> bytes:
    """af_key.ko of the generic tree, unsigned (its Debian signature stripped)."""
    with ModuleFile.open(sample_module) as mf:
        return bytes(mf.content)


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("key")
    assert main(["keys", "new", "--out", str(out), "--bits", "2048"]) == 0
    return out


def compressed(tool: str, data: bytes) -> bytes:
    exe = TOOLS[tool][0]
    if shutil.which(exe) is None:
        need(exe)
    return subprocess.run(TOOLS[tool], input=data, capture_output=True, check=True).stdout


def two_streams(tool: str, data: bytes, between: bytes = b"") -> bytes:
    half = len(data) // 2
    return compressed(tool, data[:half]) + between + compressed(tool, data[half:])


def tool_decompress(tool: str, path: Path) -> bytes:
    return subprocess.run([TOOLS[tool][0], "-dc", str(path)], capture_output=True, check=True).stdout


@pytest.mark.kernel
@pytest.mark.parametrize("tool,between", [("xz", b""), ("xz", b"\0" * 8), ("zst", b""), ("gz", b"")],
                         ids=["xz", "xz-padded", "zst", "gz"])
def test_every_stream_is_read_made_in_test(content: bytes, tmp_path: Path, tool: str, between: bytes) -> None:
    data = two_streams(tool, content, between)
    path = tmp_path / f"af_key.ko.{tool}"
    path.write_bytes(data)
    assert decompress(data, KINDS[tool], str(path)) == content == tool_decompress(tool, path)
    if tool == "gz":
        return  # bookworm's kmod has no zlib: modinfo cannot read .gz at all
    modinfo = subprocess.run(["modinfo", str(path)], capture_output=True, check=True).stdout
    mine = subprocess.run([sys.executable, "-m", "kmodkit", "info", "--no-cache", str(path)], capture_output=True,
                          check=True).stdout
    assert mine == modinfo and b"signer" not in mine


def test_truncated_second_stream_is_refused_made_in_test(tmp_path: Path) -> None:
    data = two_streams("xz", b"\x7fELF" + b"x" * 5000)
    with pytest.raises(ModuleFormatError, match="truncated|corrupt"):
        decompress(data[:-10], Compression.XZ, "cut.ko.xz")
    with pytest.raises(ModuleFormatError, match="decompression bomb"):
        decompress(data, Compression.XZ, "small-cap.ko.xz", limit=3000)
    zst = two_streams("zst", b"\x7fELF" + b"x" * 5000)
    with pytest.raises(ModuleFormatError, match="decompression bomb"):
        decompress(zst, Compression.ZSTD, "small-cap.ko.zst", limit=3000)


@pytest.mark.kernel
@pytest.mark.parametrize("tool", ["xz", "zst", "gz"])
def test_sign_keeps_every_byte_of_a_multi_stream_module_made_in_test(content: bytes, key: Path, tmp_path: Path,
                                                                     tool: str) -> None:
    path = tmp_path / f"af_key.ko.{tool}"
    path.write_bytes(two_streams(tool, content))
    assert main(["sign", "--key", str(key / "signing_key.pem"), "--cert", str(key / "signing_cert.der"),
                 str(path)]) == 0
    signed = tool_decompress(tool, path)
    body, count = strip_signatures(signed, str(path))
    assert count == 1 and bytes(body) == content


@pytest.mark.kernel
def test_replace_refuses_a_trailer_whose_signature_covers_the_whole_module_made_in_test(
        content: bytes, key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "af_key.ko"
    path.write_bytes(content + struct.pack(">BBBBB3xI", 0, 0, 2, 0, 0, len(content)) + MAGIC)
    before = path.read_bytes()
    capsys.readouterr()
    assert main(["sign", "--replace", "--key", str(key / "signing_key.pem"), "--cert",
                 str(key / "signing_cert.der"), str(path)]) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln]
    assert len(err) == 1 and err[0].startswith(f"error: {path}: ") and "no module is left" in err[0]
    assert path.read_bytes() == before
