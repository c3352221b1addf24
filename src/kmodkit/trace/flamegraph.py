"""An SVG flame graph of folded stacks, written by kmodkit (no FlameGraph scripts needed).

Layout: one box per call path, the root ("all") at the bottom, children sorted
by name and laid side by side, each as wide as its samples.  The boxes live in
a nested ``<svg>`` whose viewBox is measured in samples, so a box's ``width``
attribute *is* its sample count (scaled to the picture by the browser); the
labels sit in a layer of their own in pixels, so the text is not stretched.
The module's frames are coloured blue, the kernel's and user space's warm.
A small script makes the graph searchable (a regular expression, as in
FlameGraph's) and shows how much of the samples matched.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

#: picture width, frame height and margins, pixels
WIDTH, FRAME, PAD, TOP = 1200, 16, 10, 44

#: the search script: highlight the frames whose name matches, show the matched share of samples
_SCRIPT = """
function frames() { return Array.prototype.slice.call(document.querySelectorAll("g.f")); }
function reset() {
  frames().forEach(function (g) { var r = g.querySelector("rect"); r.setAttribute("fill", r.getAttribute("data-fill")); });
  document.getElementById("matched").textContent = "";
}
function search(term) {
  reset();
  if (!term) return;
  var re;
  try { re = new RegExp(term); } catch (e) { return; }
  var spans = [];
  frames().forEach(function (g) {
    if (!re.test(g.getAttribute("data-name"))) return;
    var r = g.querySelector("rect");
    r.setAttribute("fill", "rgb(230,0,230)");
    spans.push([+r.getAttribute("x"), +r.getAttribute("x") + +r.getAttribute("width")]);
  });
  // count each sample once: merge the matched x ranges (nested matches overlap)
  spans.sort(function (a, b) { return a[0] - b[0]; });
  var total = 0, end = -1;
  spans.forEach(function (s) { if (s[1] <= end) return; total += s[1] - Math.max(s[0], end); end = s[1]; });
  var all = +document.getElementById("frames").getAttribute("data-total");
  document.getElementById("matched").textContent =
    "Matched: " + term + " " + (100 * total / all).toFixed(1) + "% (" + total + " samples)";
}
function search_prompt() { search(prompt("Search for (regular expression):", "")); }
"""


@dataclass
class _Node:
    name: str
    count: int = 0
    children: dict[str, _Node] = field(default_factory=dict)


def _tree(folded: Iterable[tuple[str, int]]) -> _Node:
    root = _Node("all")
    for stack, count in folded:
        if count <= 0:
            continue
        root.count += count
        node = root
        for frame in stack.split(";"):
            node = node.children.setdefault(frame, _Node(frame))
            node.count += count
    return root


def _depth(node: _Node) -> int:
    return 1 + max((_depth(c) for c in node.children.values()), default=0)


def _colour(name: str, module: bool) -> str:
    # stable per name, so the same function has the same colour in every graph
    v = hashlib.blake2b(name.encode(), digest_size=2).digest()
    a, b = v[0] / 255, v[1] / 255
    if module:
        return f"rgb({int(40 + 60 * a)},{int(110 + 70 * b)},{int(200 + 55 * a)})"
    return f"rgb({int(205 + 50 * b)},{int(80 + 150 * a)},{int(30 + 40 * b)})"


def flame_graph_svg(folded: Iterable[tuple[str, int]], module_functions: frozenset[str] = frozenset(),
                    title: str = "Flame graph") -> str:
    """The SVG text of a flame graph of ``folded`` (stack, samples) pairs; an empty graph says "no samples"."""
    root = _tree(folded)
    depth = max(1, _depth(root))
    inner_w = WIDTH - 2 * PAD
    height = TOP + depth * FRAME + 30
    total = max(root.count, 1)
    px = inner_w / total  # pixels per sample
    boxes: list[str] = []
    labels: list[str] = []

    def lay(node: _Node, x: int, level: int) -> None:
        y = (depth - 1 - level) * FRAME
        mod = node.name in module_functions
        fill = _colour(node.name, mod)
        share = 100 * node.count / total
        info = f"{node.name} ({node.count} samples, {share:.2f}%)"
        boxes.append(f'<g class="f{" m" if mod else ""}" data-name={quoteattr(node.name)}>'
                     f"<title>{escape(info)}</title>"
                     f'<rect x="{x}" y="{y}" width="{node.count}" height="{FRAME - 1}" fill="{fill}" '
                     f'data-fill="{fill}"/></g>')
        width_px = node.count * px
        if width_px > 21:
            chars = int((width_px - 6) / 7)
            text = node.name if len(node.name) <= chars else node.name[:max(chars - 2, 1)] + ".."
            labels.append(f'<text x="{PAD + x * px + 3:.1f}" y="{TOP + y + FRAME - 4}">{escape(text)}</text>')
        cx = x
        for name in sorted(node.children):
            child = node.children[name]
            lay(child, cx, level + 1)
            cx += child.count

    if root.count:
        lay(root, 0, 0)
    empty = "" if root.count else f'<text x="{WIDTH // 2}" y="{TOP + 20}" text-anchor="middle">no samples</text>'
    return "".join([
        '<?xml version="1.0" encoding="UTF-8"?>\n',
        f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}">\n',
        "<style>text { font-family: monospace; font-size: 12px; fill: #000; } "
        "#labels text { pointer-events: none; } g.f:hover rect { stroke: #000; stroke-width: 0.5px; } "
        "#search { cursor: pointer; fill: #06c; }</style>\n",
        f"<script><![CDATA[{_SCRIPT}]]></script>\n",
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="rgb(250,250,240)"/>\n',
        f'<text x="{WIDTH // 2}" y="20" text-anchor="middle" style="font-size:16px">{escape(title)}</text>\n',
        f'<text id="search" x="{WIDTH - PAD}" y="20" text-anchor="end" onclick="search_prompt()">Search</text>\n',
        f'<text id="matched" x="{WIDTH - PAD}" y="{height - 8}" text-anchor="end"></text>\n',
        f'<text x="{PAD}" y="{height - 8}">{total if root.count else 0} samples; '
        'blue: the module, warm: the rest</text>\n',
        f'<svg id="frames" x="{PAD}" y="{TOP}" width="{inner_w}" height="{depth * FRAME}" '
        f'viewBox="0 0 {total} {depth * FRAME}" preserveAspectRatio="none" data-total="{total}">\n',
        "\n".join(boxes), "\n</svg>\n",
        '<g id="labels">\n', "\n".join(labels), "\n</g>\n", empty, "</svg>\n",
    ])
