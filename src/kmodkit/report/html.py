"""The fleet report as one self-contained HTML page: inline CSS, no script, nothing fetched.

The matrix is a table whose cells are filled with the status colours of :data:`COLOURS` (the legend says
which is which); on a narrow screen it scrolls sideways inside its box while the module column stays,
and the page itself never gets wider than the screen.  Below it, every pair that does not load gets its
own section: the kernel's lines, errno, why, the fix, the ABI differences and the other builds tried.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from kmodkit.report.fleet import Status

if TYPE_CHECKING:
    from kmodkit.report.fleet import Attempt, BuildState, Cell, FleetReport, SignatureState

#: the fill of a matrix cell per status (the screenshot test counts these exact colours)
COLOURS = {
    Status.LOADS: "#1a7f37",
    Status.TAINTS: "#9a6700",
    Status.REFUSED: "#cf222e",
    Status.NOT_BUILT: "#6e7781",
    Status.ERROR: "#8250df",
}

#: what the legend says of each status
_MEANING = {
    Status.LOADS: "loads, nothing tainted",
    Status.TAINTS: "loads and taints the kernel",
    Status.REFUSED: "the kernel refuses it",
    Status.NOT_BUILT: "no build to load",
    Status.ERROR: "no verdict (see below)",
}

_CSS = """
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;background:#fff}
main{max-width:1400px;margin:0 auto;padding:16px}
h1{font-size:1.4em;margin:0 0 4px}
h2{font-size:1.15em;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
h3{font-size:1em;margin:0 0 6px;overflow-wrap:anywhere}
.meta{color:#59636e;margin:0 0 8px;overflow-wrap:anywhere}
.counts span{display:inline-block;margin:2px 8px 2px 0;white-space:nowrap}
.dot{display:inline-block;width:.8em;height:.8em;border-radius:2px;vertical-align:-1px;margin-right:4px}
.scroll{overflow-x:auto;width:fit-content;max-width:100%;-webkit-overflow-scrolling:touch;border:1px solid #d0d7de;
  border-radius:6px}
table{border-collapse:separate;border-spacing:0}
.matrix th,.matrix td{padding:0;border-bottom:1px solid #fff;border-right:1px solid #fff}
.matrix thead th{background:#f6f8fa;color:#1f2328;font-weight:600;font-size:.85em;padding:8px;text-align:left;
  min-width:10em;max-width:16em;overflow-wrap:anywhere;vertical-align:bottom}
.matrix th[scope=row],.matrix thead th:first-child{position:sticky;left:0;z-index:1;background:#f6f8fa;
  padding:8px;min-width:6em;max-width:10em;overflow-wrap:anywhere;text-align:left}
.matrix td a{display:block;color:#fff;text-decoration:none;padding:8px 10px;min-height:4.5em;min-width:10em}
.matrix td b{display:block;font-size:1.05em}
.matrix td small{display:block;opacity:.92;font-size:.78em;overflow-wrap:anywhere}
.legend{font-size:.85em;color:#59636e;margin:8px 0 0}
.legend span{display:inline-block;margin-right:12px;white-space:nowrap}
article{border:1px solid #d0d7de;border-left-width:6px;border-radius:6px;padding:10px 12px;margin:0 0 12px}
pre{margin:6px 0;padding:8px;background:#f6f8fa;border-radius:4px;overflow-x:auto;white-space:pre-wrap;
  overflow-wrap:anywhere;font:13px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.fix{font-weight:600}
.pairs{font-size:.85em}
.pairs th,.pairs td{padding:6px 8px;border-bottom:1px solid #d0d7de;text-align:left;vertical-align:top}
.pairs td{overflow-wrap:anywhere;min-width:6em}
.abi td,.abi th{padding:4px 8px;border-bottom:1px solid #eaeef2;text-align:left;font-size:.9em}
ul{margin:4px 0;padding-left:20px}
@media (max-width:600px){
  body{font-size:14px}
  main{padding:10px}
  .matrix thead th{min-width:8.5em}
  .matrix td a{min-width:8.5em;padding:6px 8px}
}
"""


def render(report: FleetReport) -> str:
    """The page."""
    counts = report.counts()
    title = f"Fleet report: {Path(report.project).name} {report.version}"
    parts = [
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{_e(title)}</h1>",
        f"<p class=\"meta\">{_e(report.project)} · {len(report.modules)} module(s) × {len(report.kernels)} "
        f"kernel(s) · {_e(_machine_text(report))} · generated {_e(report.generated_at)} by kmodkit</p>",
        "<p class=\"counts\">" + "".join(
            f"<span><span class=\"dot\" style=\"background:{COLOURS[s]}\"></span>{counts[s.value]} {_e(s.value)}</span>"
            for s in Status if counts[s.value]) + "</p>",
        "<h2>Matrix</h2>", _matrix(report), _legend(),
    ]
    bad = [c for c in report.cells if not c.status.loads]
    if bad:
        parts.append("<h2>Why not</h2>")
        parts += [_explain(c) for c in bad]
    parts += ["<h2>Every pair</h2>", _pairs(report), "</main></body></html>\n"]
    return "\n".join(parts)


def check_destination(path: str | Path) -> None:
    """Raise :class:`~kmodkit.errors.UserError` when the page cannot go to ``path``: a directory, or a file
    in a directory that does not exist (said before the report is made, not by a temp file's name after)."""
    from kmodkit.errors import UserError

    p = Path(path)
    if p.is_dir():
        raise UserError(str(p), "is a directory", "name the HTML file to write, e.g. report.html")
    if not p.absolute().parent.is_dir():
        raise UserError(str(p), f"its directory {p.absolute().parent} does not exist",
                        "create it, or name another file")


def write(report: FleetReport, path: str | Path) -> None:
    """Write the page to ``path`` (a temp file renamed into place); raises as :func:`check_destination`."""
    from kmodkit.fileio import write_atomic

    check_destination(path)
    write_atomic(path, render(report).encode(), durable=False)


def anchor(cell: Cell) -> str:
    """The id of a pair's section in the page."""
    return f"pair-{cell.module}-{cell.kernel}"


def _e(text: str) -> str:
    return escape(text, quote=True)


def _machine_text(report: FleetReport) -> str:
    m = report.machine
    said = ["signatures " + ("enforced" if m.enforce else "not enforced") if m.enforce is not None
            else "signature enforcement from each kernel's config"]
    if m.lockdown is not None:
        said.append(f"lockdown {m.lockdown.value}")
    if m.cmdline:
        said.append("command line " + " ".join(m.cmdline))
    if report.certs:
        said.append("enrolled: " + ", ".join(report.certs))
    return "; ".join(said)


def _headline(cell: Cell) -> tuple[str, str]:
    """The cell's status word and what follows it (errno, taints)."""
    j = cell.judged
    p = j.prediction if j is not None else None
    if cell.status is Status.REFUSED and p is not None and p.refusal is not None:
        return "refused", p.refusal.errno_name
    if cell.status is Status.TAINTS and p is not None:
        return "loads", f"taints {p.taints}"
    return cell.status.value.replace("-", " "), ""


def _build_text(build: BuildState, cell: Cell) -> str:
    if build.built:
        when = (build.built_at or "").replace("T", " ").rstrip("Z")
        return f"built {when}".strip() + (f", {build.compiler_name}" if build.compiler_name else "")
    if cell.judged is not None:
        return f"not built; the build for {cell.judged.built_for}"
    return "not built"


def _signature_text(sig: SignatureState | None) -> str:
    if sig is None:
        return ""
    if not sig.signed:
        return "unsigned"
    trust = {True: "trusted", False: "key not trusted", None: "trust unknown"}[sig.trusted]
    return f"signed ({sig.signer or sig.key_id or 'unknown signer'}), {trust}"


def _matrix(report: FleetReport) -> str:
    rows = ["<div class=\"scroll\"><table class=\"matrix\"><thead><tr><th scope=\"col\">module</th>"]
    rows += [f"<th scope=\"col\">{_e(k)}</th>" for k in report.kernels]
    rows.append("</tr></thead><tbody>")
    for m in report.modules:
        rows.append(f"<tr><th scope=\"row\">{_e(m)}</th>")
        for k in report.kernels:
            c = report.cell(m, k)
            if c is None:
                rows.append("<td></td>")
                continue
            word, more = _headline(c)
            lines = [_build_text(c.build, c), _signature_text(c.signature)]
            rows.append(
                f"<td class=\"cell\" data-module=\"{_e(m)}\" data-kernel=\"{_e(k)}\" data-status=\"{c.status.value}\" "
                f"style=\"background:{COLOURS[c.status]}\"><a href=\"#{_e(anchor(c))}\"><b>{_e(word)}</b>"
                + (f"<small>{_e(more)}</small>" if more else "")
                + "".join(f"<small>{_e(t)}</small>" for t in lines if t) + "</a></td>")
        rows.append("</tr>")
    rows.append("</tbody></table></div>")
    return "".join(rows)


def _legend() -> str:
    return "<p class=\"legend\">" + "".join(
        f"<span><span class=\"dot\" style=\"background:{COLOURS[s]}\"></span>{_e(s.value)}: {_e(_MEANING[s])}</span>"
        for s in Status) + "</p>"


def _attempt_lines(a: Attempt) -> list[str]:
    out = []
    p = a.prediction
    if a.error is not None:
        out.append(f"<p>no verdict: {_e(str(a.error))}</p>")
    if p is not None:
        if p.lines:
            out.append("<pre class=\"log\">" + "\n".join(_e(str(line)) for line in p.lines) + "</pre>")
        r = p.refusal
        if r is not None:
            out.append(f"<p>finit_module: <code>{_e(r.errno_name)}</code> ({r.errno}, {_e(r.strerror)}) at the "
                       f"<code>{_e(r.check)}</code> check — {_e(r.problem)}</p>")
        if p.needs:
            out.append(f"<p>needs loaded first: {_e(', '.join(p.needs))}</p>")
    if a.abi is not None:
        out.append(_abi(a))
    return out


def _abi(a: Attempt) -> str:
    assert a.abi is not None
    c = a.abi
    rows = []
    if c.vermagic is not None:
        rows.append(("vermagic", f"'{c.vermagic[0].strip()}' → '{c.vermagic[1].strip()}'"))
    if c.struct_module is not None:
        rows.append(("struct module", f"{c.struct_module[0]} → {c.struct_module[1]} bytes"))
    rows.append(("module_layout", "changed: every module must be rebuilt" if c.module_layout else "same"))
    rows += [(b.symbol, b.detail) for b in c.broken]
    if not c.broken:
        rows.append(("imports", "none of the module's imports changed"))
    return (f"<p>ABI differences {_e(c.built_for)} → {_e(c.kernel)} (abi diff, for this module's imports):</p>"
            "<div class=\"scroll\"><table class=\"abi\">" + "".join(
                f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows) + "</table></div>")


def _explain(cell: Cell) -> str:
    word, more = _headline(cell)
    head = f"{cell.module} on {cell.kernel}: {word}" + (f" ({more})" if more else "")
    body = [f"<article id=\"{_e(anchor(cell))}\" style=\"border-left-color:{COLOURS[cell.status]}\">",
            f"<h3>{_e(head)}</h3>"]
    j = cell.judged
    if j is None:
        body.append("<p>no build of this module exists for any kernel.</p>")
    else:
        if not cell.build.built:
            body.append(f"<p>not built for {_e(cell.kernel)}; judged by the build for {_e(j.built_for)} "
                        f"(<code>{_e(j.path)}</code>)</p>")
        body += _attempt_lines(j)
    if cell.fix:
        body.append(f"<p class=\"fix\">fix: {_e(cell.fix)}</p>")
    for other in cell.others:
        word2, more2 = _headline_of(other)
        body.append(f"<p>also tried: the build for {_e(other.built_for)}: {_e(word2)}"
                    + (f" ({_e(more2)})" if more2 else "") + "</p>")
        body += _attempt_lines(other)
    body.append("</article>")
    return "".join(body)


def _headline_of(a: Attempt) -> tuple[str, str]:
    p = a.prediction
    if a.status is Status.REFUSED and p is not None and p.refusal is not None:
        return "refused", p.refusal.errno_name
    return a.status.value, ""


def _pairs(report: FleetReport) -> str:
    head = ("kernel", "module", "status", "built", "compiler", "vermagic", "signature", "file judged")
    rows = ["<div class=\"scroll\"><table class=\"pairs\"><thead><tr>"
            + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"]
    for c in report.cells:
        b = c.build
        cells = (c.kernel, c.module, " ".join(x for x in _headline(c) if x),
                 b.built_at or ("no" if not b.built else ""),
                 b.compiler or "", b.vermagic or "", _signature_text(c.signature),
                 c.judged.path if c.judged is not None else "")
        rows.append("<tr>" + "".join(f"<td>{_e(x)}</td>" for x in cells) + "</tr>")
    rows.append("</tbody></table></div>")
    return "".join(rows)
