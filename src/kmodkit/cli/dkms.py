"""``kmodkit dkms export``: write a DKMS source tree (/usr/src/NAME-VERSION with dkms.conf) for a project."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dkms_command", metavar="ACTION", required=True)
    export = sub.add_parser("export", help="write a DKMS source tree with dkms.conf for a kmodkit project",
                            description="Write DEST/NAME-VERSION: the project's sources (no kmodkit.toml, no "
                            "private key), its include paths and cflags in its Kbuild files, and dkms.conf; with "
                            "a signing key, a framework.conf.d snippet naming it. An identical tree is left as it "
                            "is; a different one is never overwritten. 'kmodkit build' reads such a tree back.")
    export.add_argument("project", nargs="?", default=".", metavar="PROJECT_DIR",
                        help="the project directory, holding kmodkit.toml (default: .)")
    export.add_argument("--dest", default="/usr/src", metavar="DIR",
                        help="where the tree goes, as DIR/NAME-VERSION (default: /usr/src, where DKMS looks)")
    export.add_argument("--version", metavar="V", help="PACKAGE_VERSION (default: the first module's version)")
    export.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    from kmodkit.cli.output import print_json
    from kmodkit.kbuild.dkms import DkmsExport

    export = DkmsExport(Path(args.project), Path(args.dest), args.version)
    result = export.write()
    if args.json:
        print_json(result.to_json())
        return 0
    out = sys.stdout
    out.write(f"{result.tree}: {'written' if result.written else 'up to date'} "
              f"({len(result.files)} files, modules {', '.join(m.name for m in export.manifest.modules)})\n")
    if result.signing_conf is not None:
        out.write(f"signing: copy {result.signing_conf} to /etc/dkms/framework.conf.d/ (DKMS 3.0 signs every "
                  "package with the key named there)\n")
    where = result.tree.resolve().parent  # dkms links its tree to the source by this path: never a relative one
    source = "" if where == Path("/usr/src") else f" --sourcetree {shlex.quote(str(where))}"
    out.write(f"next: dkms add -m {result.name} -v {result.version}{source} && "
              f"dkms install -m {result.name} -v {result.version}{source} -k KVER\n")
    return 0
