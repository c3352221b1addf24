"""The SVG flame graph: valid XML, each box as wide as its samples, the module's frames apart,
searchable, and drawn by a real browser (headless chromium) as a picture that is not blank.

The folded stacks are written here in FlameGraph's format; the graph of a real profile is
checked the same way in tests/test_trace_vm.py.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib
from collections import Counter
from pathlib import Path

import pytest

from kmodkit.trace.flamegraph import flame_graph_svg
from conftest import need

SVG = "{http://www.w3.org/2000/svg}"

FOLDED = [
    ("sh;entry_SYSCALL_64;ksys_write;hello_write;hello_step", 300),
    ("sh;entry_SYSCALL_64;ksys_write;hello_write;hello_step_locked;_raw_spin_lock;native_queued_spin_lock_slowpath",
     120),
    ("sh;entry_SYSCALL_64;ksys_write;hello_write", 5),
    ("swapper;default_idle <&>", 75),
]
MODULE = frozenset({"hello_write", "hello_step", "hello_step_locked"})


def path_counts(folded: list[tuple[str, int]]) -> Counter[tuple[str, ...]]:
    """Samples per call path: what each box's width must be."""
    out: Counter[tuple[str, ...]] = Counter()
    for stack, n in folded:
        frames = stack.split(";")
        for i in range(1, len(frames) + 1):
            out[tuple(frames[:i])] += n
    return out


def boxes(svg: str) -> list[tuple[str, float, float, float, bool]]:
    """(name, x, y, width, module?) of every frame box."""
    root = ET.fromstring(svg)
    frames = root.find(f".//{SVG}svg[@id='frames']")
    assert frames is not None
    out = []
    for g in frames.iter(f"{SVG}g"):
        r = g.find(f"{SVG}rect")
        assert r is not None
        out.append((g.get("data-name", ""), float(r.get("x", "")), float(r.get("y", "")), float(r.get("width", "")),
                    "m" in (g.get("class") or "").split()))
    return out


def check_widths(svg: str, folded: list[tuple[str, int]]) -> None:
    """Every box's width equals its call path's samples (paths rebuilt from the boxes' positions)."""
    laid = boxes(svg)
    rows = sorted({y for _, _, y, _, _ in laid}, reverse=True)  # the root at the bottom
    level = {y: i for i, y in enumerate(rows)}
    by_level: dict[int, list[tuple[str, float, float]]] = {}
    for name, x, y, w, _ in laid:
        by_level.setdefault(level[y], []).append((name, x, w))
    widths: Counter[tuple[str, ...]] = Counter()
    for lv, items in by_level.items():
        for name, x, w in items:
            path = [name]
            for up in range(lv - 1, -1, -1):
                path.insert(0, next(n for n, px, pw in by_level[up] if px <= x < px + pw))
            if lv:
                widths[tuple(path[1:])] += int(w)  # path[0] is the root, "all"
    assert widths == path_counts(folded)
    assert sum(w for n, _, _, w, _ in laid if n == "all") == sum(n for _, n in folded)


def test_svg_is_valid_xml_and_widths_are_the_folded_counts() -> None:
    svg = flame_graph_svg(FOLDED, MODULE, "hello <test>")
    check_widths(svg, FOLDED)


def test_module_frames_are_coloured_apart_and_the_graph_is_searchable() -> None:
    svg = flame_graph_svg(FOLDED, MODULE)
    laid = boxes(svg)
    assert {n for n, *_, mod in laid if mod} == MODULE
    fills = {n: f for n, f in ((g.get("data-name"), g.find(f"{SVG}rect").get("fill"))  # type: ignore[union-attr]
                               for g in ET.fromstring(svg).iter(f"{SVG}g") if g.get("data-name"))}
    assert fills["hello_step"] != fills["ksys_write"]
    assert "function search(" in svg and 'id="search"' in svg


def test_empty_profile_gives_a_valid_graph_that_says_so() -> None:
    svg = flame_graph_svg([], MODULE)
    ET.fromstring(svg)
    assert "no samples" in svg and boxes(svg) == []


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and unfiltered rows of an 8-bit RGB or RGBA PNG (what chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, ihdr = 8, b"", b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            ihdr = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    w, h, depth, colour = struct.unpack(">IIBB", ihdr[:10])
    assert depth == 8 and colour in (2, 6)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = w * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, rows


def render(svg_path: Path, png: Path) -> tuple[int, int, list[bytes]]:
    """Screenshot ``svg_path`` with headless chromium (Debian's package); skips when it is not installed."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed: scripts/bootstrap setup installs it")
        need("chromium")
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={png.parent / 'chromium-profile'}", f"--screenshot={png}",
                    "--window-size=1200,400", svg_path.as_uri()], check=True, capture_output=True, timeout=120)
    return png_pixels(png.read_bytes())


def test_chromium_draws_the_graph(tmp_path: Path) -> None:
    svg = tmp_path / "hello.svg"
    svg.write_text(flame_graph_svg(FOLDED, MODULE, "hello"))
    w, h, rows = render(svg, tmp_path / "shot.png")
    assert (w, h) == (1200, 400)
    # the module's boxes are blue (blue well above red), the rest warm: both must be on the picture
    blue = warm = 0
    bpp = len(rows[0]) // w
    for row in rows:
        for i in range(0, len(row), bpp):
            r, g, b = row[i], row[i + 1], row[i + 2]
            blue += b > r + 60
            warm += r > b + 100
    assert blue > 1000 and warm > 1000, (blue, warm)
