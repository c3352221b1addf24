"""Re-record the expectations next to each checked-in module with the real tools.

Run from anywhere: ``python tests/data/record.py``.  For every module under
``modules/ARCH/`` it writes ``NAME.expected.txt``: the outputs of kmod's
``modinfo`` (whole text and ``-F`` of the fields the tests check), kmod's
``modprobe --dump-modversions``, and binutils' ``nm -u`` and ``objdump -t``
(the ``__ksymtab_`` lines), each under a ``=== COMMAND`` line.  The module's
own path is written as ``@FILE@`` so the file does not depend on where the
checkout lives.  kmod reads every ELF class and byte order; binutils' generic
ELF support reads the symbol tables of every architecture here.
"""

from __future__ import annotations

import lzma
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODULES = HERE / "modules"
FIELDS = ("filename", "name", "depends", "alias", "parm", "vermagic", "license", "sig_key", "signature")


def commands(path: Path) -> list[tuple[str, list[str]]]:
    """(title, argv) of every recorded command; ``FILE`` stands for the module."""
    cmds = [("modinfo FILE", ["modinfo", "FILE"])]
    cmds += [(f"modinfo -F {f} FILE", ["modinfo", "-F", f, "FILE"]) for f in FIELDS]
    cmds.append(("modprobe --dump-modversions FILE", ["modprobe", "--dump-modversions", "FILE"]))
    cmds.append(("nm -u FILE", ["nm", "-u", "RAW"]))
    cmds.append(("objdump -t FILE | grep ' __ksymtab_'", ["objdump", "-t", "RAW"]))
    return cmds


def record(path: Path) -> str:
    """The expectation text of one module."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        raw = path
        if path.suffix == ".xz":  # binutils reads no compressed module: give it the ELF inside
            raw = Path(tmp) / path.stem
            raw.write_bytes(lzma.decompress(path.read_bytes()))
        for title, argv in commands(path):
            argv = [str(path) if a == "FILE" else str(raw) if a == "RAW" else a for a in argv]
            text = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
            if title.startswith("objdump"):
                text = "".join(line + "\n" for line in text.splitlines() if " __ksymtab_" in line)
            out.append(f"=== {title}\n" + text.replace(str(path), "@FILE@").replace(str(raw), "@FILE@"))
    return "".join(out)


def main() -> int:
    for path in sorted(MODULES.glob("*/*.ko*")):
        if path.name.endswith(".txt"):
            continue
        path.with_name(path.name + ".expected.txt").write_text(record(path))
        print(path.relative_to(HERE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
