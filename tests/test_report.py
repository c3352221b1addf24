"""``kmodkit report``: the fleet matrix of a real project built for one installed kernel and judged on others.

The project is what ``kmodkit new`` writes, built by ``kmodkit build`` for the newest 6.1 cloud kernel
only; the 6.12 cloud kernel then has no build of its own, so the pair is judged by the 6.1 build, which
6.12 refuses (struct module grew: the kernel's ``.gnu.linkonce.this_module`` line), and the report names
the ABI differences behind it.  ``--enforce 1`` makes the built pair refused too (unsigned).  The verdicts
are ``check``'s (judged by booted kernels in test_check_vm.py): the report is compared with CheckRun's
own prediction for the same file, not with a second model.  The page is rendered by headless Chromium at a
phone's width and a wide screen's, and the matrix's coloured cells are found in the screenshots.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import KernelTree, discover_trees, need
from test_flamegraph_svg import png_pixels

IN_CI = os.environ.get("CI") == "true"


def _tree(pred: object, what: str) -> KernelTree:
    for t in discover_trees():
        if t.headers is not None and pred(t):  # type: ignore[operator]
            return t
    need(what)
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def cloud61() -> KernelTree:
    """The newest 6.1 cloud kernel with headers: the one kernel the project is built for."""
    return _tree(lambda t: t.series == "6.1" and t.flavour == "cloud-amd64", "a 6.1 cloud-amd64 kernel with headers")


@pytest.fixture(scope="module")
def cloud612() -> KernelTree:
    """A 6.12 kernel with headers: in the fleet, but not built for."""
    return _tree(lambda t: t.series == "6.12", "a 6.12 kernel with headers")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, cloud61: KernelTree) -> Path:
    """``kmodkit new hello``, built for the 6.1 cloud kernel alone."""
    from kmodkit.kbuild.builder import Build
    from kmodkit.kbuild.project import NewProject

    directory = tmp_path_factory.mktemp("report") / "hello"
    NewProject("hello", directory).create()
    result = Build(directory, [cloud61.release], check=False).run()
    assert result.ok, [r.to_json() for r in result.results]
    return directory


def _report(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from kmodkit.cli.main import main

    status = main(["report", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object]]:
    import jsonschema

    from kmodkit.report.fleet import schema

    status, out, err = _report(capsys, *argv, "--json")
    assert err == ""
    doc = json.loads(out)
    jsonschema.Draft202012Validator.check_schema(schema())
    jsonschema.validate(doc, schema(), cls=jsonschema.Draft202012Validator)
    return status, doc


def _cell(doc: dict[str, object], module: str, kernel: str) -> dict[str, object]:
    cells = doc["cells"]
    assert isinstance(cells, list)
    return next(c for c in cells if c["module"] == module and c["kernel"] == kernel)


def _predict(module: Path, kernel: str, enforce: bool | None = None) -> dict[str, object]:
    """What ``check`` itself predicts for the file on the kernel (the report must say the same)."""
    from kmodkit.check.checker import Machine
    from kmodkit.check.run import CheckRun

    (result,) = CheckRun([str(module)], [kernel], Machine(enforce=enforce)).results()
    assert result.prediction is not None
    return result.prediction.to_json()


def test_json_names_the_refusal_its_line_fix_and_abi_cause(capsys: pytest.CaptureFixture[str], project: Path,
                                                           cloud61: KernelTree, cloud612: KernelTree) -> None:
    status, doc = _json(capsys, str(project), "-k", cloud61.release, "-k", cloud612.release)
    assert status == 1 and doc["ok"] is False
    assert doc["kernels"] == [cloud61.release, cloud612.release] and doc["modules"] == ["hello"]
    built = project / "out" / cloud61.release / "hello.ko"

    own = _cell(doc, "hello", cloud61.release)
    assert own["status"] == "taints" and own["loads"] is True  # out of tree (O), unsigned (E)
    b = own["build"]
    assert isinstance(b, dict) and b["built"] is True and b["path"] == str(built)
    rec = json.loads((built.parent / "build.json").read_text())
    assert b["built_at"] == rec["built_at"] and "gcc" in str(b["compiler"]) and b["vermagic"] == rec["vermagic"]
    sig = own["signature"]
    assert isinstance(sig, dict)
    assert {k: sig[k] for k in ("signed", "verdict", "signer", "key_id", "trusted")} == \
        {"signed": False, "verdict": "unsigned", "signer": None, "key_id": None, "trusted": False}
    judged = own["judged"]
    assert isinstance(judged, dict) and judged["check"] == _predict(built, cloud61.release)

    other = _cell(doc, "hello", cloud612.release)
    assert other["status"] == "refused" and other["build"]["built"] is False  # type: ignore[index]
    judged = other["judged"]
    assert isinstance(judged, dict) and judged["built_for"] == cloud61.release and judged["path"] == str(built)
    check = judged["check"]
    assert check == _predict(built, cloud612.release)  # check's verdict, not a second one
    assert isinstance(check, dict) and check["refusal"]["errno_name"] == "ENOEXEC"  # type: ignore[index]
    assert any(".gnu.linkonce.this_module section size must match" in line for line in check["lines"])  # type: ignore
    assert other["fix"] == check["refusal"]["fix"]  # type: ignore[index]
    assert f"kmodkit build -k {cloud612.release}" in str(other["fix"])
    abi = judged["abi"]
    assert isinstance(abi, dict) and abi["built_for"] == cloud61.release and abi["kernel"] == cloud612.release
    assert abi["struct_module"] is not None and abi["module_layout_changed"] is True
    # the broken imports are abi diff's for this module: every one is a symbol the module imports
    from kmodkit.check.abi import module_imports

    imports = module_imports(str(built)).symbols
    assert abi["broken_imports"] and all(i["symbol"] in imports for i in abi["broken_imports"])  # type: ignore
    assert doc["counts"] == {"loads": 0, "taints": 1, "refused": 1, "not-built": 0, "error": 0}


def test_enforced_signatures_refuse_the_unsigned_build_in_json_text_and_html(
        capsys: pytest.CaptureFixture[str], project: Path, cloud61: KernelTree, tmp_path: Path) -> None:
    status, doc = _json(capsys, str(project), "-k", cloud61.release, "--enforce", "1")
    assert status == 1
    cell = _cell(doc, "hello", cloud61.release)
    check = cell["judged"]["check"]  # type: ignore[index]
    assert check == _predict(project / "out" / cloud61.release / "hello.ko", cloud61.release, enforce=True)
    assert check["refusal"]["errno_name"] == "EKEYREJECTED"
    assert "<5>Loading of unsigned module is rejected" in check["lines"]
    fix = check["refusal"]["fix"]
    assert fix and cell["fix"] == fix and doc["machine"]["enforce"] is True  # type: ignore[index]

    page = tmp_path / "report.html"
    status, out, err = _report(capsys, str(project), "-k", cloud61.release, "--enforce", "1", "--html", str(page))
    assert status == 1 and err == ""
    assert "refused EKEYREJECTED" in out and "Loading of unsigned module is rejected" in out and f"fix: {fix}" in out
    text = page.read_text()
    from html import escape

    assert escape("<5>Loading of unsigned module is rejected") in text and escape(fix) in text
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temp file left beside it


class _Cells(HTMLParser):
    """The matrix cells of a page: (module, kernel) -> status, and every external reference."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[tuple[str, str], str] = {}
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "td" and "data-status" in a:
            self.cells[(str(a["data-module"]), str(a["data-kernel"]))] = str(a["data-status"])
        if tag == "script":
            self.external.append("script")
        for key in ("src", "href"):
            value = a.get(key)
            if value is not None and not value.startswith("#"):
                self.external.append(value)


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if IN_CI:
            pytest.fail("chromium is not installed: scripts/bootstrap setup installs it")
        need("chromium")
    return found


def _runs(rows: list[bytes], bpp: int, colour: str, at_least: int) -> list[tuple[int, int]]:
    """(row, first column) of every row holding ``at_least`` consecutive pixels of ``colour`` (±6 per channel)."""
    want = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
    found = []
    for y, row in enumerate(rows):
        run = start = 0
        for x in range(0, len(row) // bpp):
            px = row[x * bpp:x * bpp + 3]
            if all(abs(px[i] - want[i]) <= 6 for i in range(3)):
                if run == 0:
                    start = x
                run += 1
                if run == at_least:
                    found.append((y, start))
                    break
            else:
                run = 0
    return found


@pytest.mark.parametrize("width,height", [(390, 844), (1400, 900)], ids=["phone", "wide"])
def test_chromium_shows_the_matrix(capsys: pytest.CaptureFixture[str], project: Path, cloud61: KernelTree,
                                   cloud612: KernelTree, tmp_path: Path, width: int, height: int) -> None:
    from kmodkit.report.fleet import Status
    from kmodkit.report.html import COLOURS

    page = tmp_path / "report.html"
    status, _out, _err = _report(capsys, str(project), "-k", cloud61.release, "-k", cloud612.release,
                                 "--html", str(page))
    assert status == 1
    parser = _Cells()
    parser.feed(page.read_text())
    assert parser.cells == {("hello", cloud61.release): "taints", ("hello", cloud612.release): "refused"}
    assert parser.external == []  # self-contained: no script, nothing fetched, links only within the page

    png = tmp_path / "shot.png"
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}", f"--window-size={width},{height}",
                    page.as_uri()], check=True, capture_output=True, timeout=120)
    w, h, rows = png_pixels(png.read_bytes())
    assert (w, h) == (width, height)
    bpp = len(rows[0]) // w
    # the page is drawn: plenty of pixels are neither white nor the background
    inked = sum(1 for row in rows[::4] for x in range(0, w, 4) if row[x * bpp:x * bpp + 3] != b"\xff\xff\xff")
    assert inked > 500, inked
    # the two cells: blocks of their status colours (wider than any legend dot or border), side by side,
    # both inside the screen at either width
    taints = _runs(rows, bpp, COLOURS[Status.TAINTS], 80)
    refused = _runs(rows, bpp, COLOURS[Status.REFUSED], 80)
    assert len(taints) >= 40 and len(refused) >= 40, (len(taints), len(refused))
    shared = {y for y, _ in taints} & {y for y, _ in refused}
    assert len(shared) >= 40  # the same rows: one table row of the matrix
    assert max(x for _, x in taints) < min(x for _, x in refused)  # the kernels in the order named


def test_a_kernel_without_a_build_is_judged_by_the_builds_that_exist(project: Path, cloud61: KernelTree) -> None:
    """Every other installed kernel has no build: each is judged by the 6.1 cloud build, as check judges it."""
    from kmodkit.report.fleet import FleetRun, Status

    built = project / "out" / cloud61.release / "hello.ko"
    others = [t.release for t in discover_trees() if t.headers is not None and t.release != cloud61.release]
    if not others:
        need("a second installed kernel with headers")
    report = FleetRun(project, others).report()
    for release in others:
        cell = report.cell("hello", release)
        assert cell is not None and cell.judged is not None and not cell.build.built
        assert cell.judged.built_for == cloud61.release and cell.others == ()
        assert cell.judged.prediction is not None
        assert cell.judged.prediction.to_json() == _predict(built, release)
        assert cell.status.loads is cell.judged.prediction.loads
        assert (cell.status is Status.REFUSED) is (not cell.judged.prediction.loads)


def test_nothing_built_is_not_built_with_the_build_command(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                          cloud61: KernelTree) -> None:
    from kmodkit.kbuild.project import NewProject

    NewProject("fresh", tmp_path / "fresh").create()
    status, doc = _json(capsys, str(tmp_path / "fresh"), "-k", cloud61.release)
    assert status == 1
    cell = _cell(doc, "fresh", cloud61.release)
    assert cell["status"] == "not-built" and cell["judged"] is None and cell["signature"] is None
    assert cell["fix"] == f"build the module for {cloud61.release} (kmodkit build -k {cloud61.release})"


def test_a_kernel_without_headers_is_one_error_line_fake_root(project: Path, tmp_path: Path,
                                                              cloud61: KernelTree) -> None:
    """A fake machine root whose only kernel has a module directory and no headers (reality has none here)."""
    from kmodkit.errors import EnvironmentNotReady
    from kmodkit.report.fleet import FleetRun, Status
    from kmodkit.sysroot import Root

    (tmp_path / "lib" / "modules" / "6.1.0-99-cloud-amd64").mkdir(parents=True)
    report = FleetRun(project, ["6.1.0-99-cloud-amd64"], root=Root.of(tmp_path)).report()
    (cell,) = report.cells
    assert cell.status is Status.ERROR and cell.judged is not None
    assert isinstance(cell.judged.error, EnvironmentNotReady)
    assert "headers" in cell.judged.error.problem and cell.fix == "install linux-headers-6.1.0-99-cloud-amd64"


def test_bad_project_is_one_error_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, out, err = _report(capsys, str(tmp_path / "nothing"))
    assert status == 2 and out == ""
    assert len(err.splitlines()) == 1 and re.match(r"error: .*nothing", err), err


def test_a_project_using_another_projects_exports_loads_after_it(tmp_path: Path, cloud61: KernelTree) -> None:
    """The probe project needs the core project's exports: its builds are loaded first, as build's check has
    them (without them check says "Unknown symbol")."""
    from kmodkit.kbuild.builder import Build
    from kmodkit.report.fleet import FleetRun

    projects = Path(__file__).parent / "data" / "projects"
    for name in ("core", "probe"):
        shutil.copytree(projects / name, tmp_path / name)
        assert Build(tmp_path / name, [cloud61.release], workdir=tmp_path / "work", check=False).run().ok
    report = FleetRun(tmp_path / "probe", [cloud61.release]).report()
    (cell,) = report.cells
    assert cell.judged is not None and cell.judged.prediction is not None, cell
    assert cell.status.loads, cell.judged.prediction.to_json()
    assert "fleetmon" in cell.judged.prediction.needs


def test_signature_state_names_the_key_and_whether_the_kernel_trusts_it(
        capsys: pytest.CaptureFixture[str], project: Path, cloud61: KernelTree, tmp_path: Path) -> None:
    """The build signed with a key of our own: kmod's modinfo names signer and key; the kernel trusts it only
    once the certificate is enrolled (--cert), and refuses it under enforcement until then."""
    from kmodkit.cli.main import main

    copy = tmp_path / "hello"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("tests"))
    key, cert = tmp_path / "signing.pem", tmp_path / "signing.crt"
    old = os.umask(0o077)
    try:
        subprocess.run(["openssl", "req", "-new", "-nodes", "-utf8", "-sha256", "-days", "30", "-batch", "-x509",
                        "-subj", "/CN=kmodkit report test", "-newkey", "rsa:2048", "-keyout", str(key),
                        "-outform", "PEM", "-out", str(cert)], check=True, capture_output=True)
    finally:
        os.umask(old)
    ko = copy / "out" / cloud61.release / "hello.ko"
    assert main(["sign", "--key", str(key), "--cert", str(cert), str(ko)]) == 0
    capsys.readouterr()

    def modinfo(field: str) -> str:
        return subprocess.run(["modinfo", "-F", field, str(ko)], check=True, capture_output=True,
                              text=True).stdout.strip()

    status, doc = _json(capsys, str(copy), "-k", cloud61.release, "--enforce", "1")
    cell = _cell(doc, "hello", cloud61.release)
    sig = cell["signature"]
    assert isinstance(sig, dict) and sig["signed"] is True and sig["trusted"] is False
    assert sig["signer"] == modinfo("signer") == "kmodkit report test" and sig["key_id"] == modinfo("sig_key")
    assert status == 1 and cell["status"] == "refused"
    assert "<5>Loading of module with unavailable key is rejected" in cell["judged"]["check"]["lines"]  # type: ignore

    status, doc = _json(capsys, str(copy), "-k", cloud61.release, "--enforce", "1", "--cert", str(cert))
    cell = _cell(doc, "hello", cloud61.release)
    assert status == 0 and cell["status"] == "taints" and cell["judged"]["check"]["taints"] == "O"  # type: ignore
    assert cell["signature"]["trusted"] is True and cell["signature"]["verdict"] == "valid"  # type: ignore[index]
    assert doc["machine"]["certs"] == [str(cert)]  # type: ignore[index]


def test_an_html_file_in_a_missing_directory_is_one_error_line_naming_it(capsys: pytest.CaptureFixture[str],
                                                                        tmp_path: Path) -> None:
    """0.1 of report named the temp file (.x.html.kmodkit-PID-0.tmp) that could not be made."""
    from kmodkit.kbuild.project import NewProject

    NewProject("fresh", tmp_path / "fresh").create()
    page = tmp_path / "missing" / "x.html"
    status, out, err = _report(capsys, str(tmp_path / "fresh"), "--html", str(page))
    assert status == 2 and out == ""
    assert err == f"error: {page}: its directory {page.parent} does not exist; create it, or name another file\n"
