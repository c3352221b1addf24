"""``kmodkit hook``: the kernel-upgrade hook (install / remove it; run it, as the kernel package does)."""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("install", "remove", "run"),
                        help="install: write /etc/kernel/{postinst.d,header_postinst.d,prerm.d}/kmodkit; "
                        "remove: delete them; run KVER: what they do (build, sign, install registered projects "
                        "for KVER)")
    parser.add_argument("kernel", nargs="?", metavar="KVER", help="run: the kernel just installed (or removed)")
    parser.add_argument("--removed", action="store_true", help="run: the kernel is being removed: uninstall")
    parser.add_argument("--root", metavar="DIR", help="the machine's root (default /)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    from kmodkit.cli.output import print_json
    from kmodkit.errors import UserError
    from kmodkit.kbuild import hook
    from kmodkit.sysroot import Root

    root = Root.of(args.root)
    if args.action != "run":
        if args.kernel or args.removed:
            raise UserError(f"hook {args.action}", "takes no kernel and no --removed", "pass only --root")
        paths = hook.install_hook(root) if args.action == "install" else hook.remove_hook(root)
        if args.json:
            print_json({"action": args.action, "files": [str(p) for p in paths]})
        for p in paths if not args.json else []:
            sys.stdout.write(f"{'wrote' if args.action == 'install' else 'removed'} {p}\n")
        if args.action == "install" and not args.json:
            sys.stdout.write("projects 'kmodkit install' installs are built for every kernel installed from now on\n")
        return 0
    if not args.kernel:
        raise UserError("hook run", "needs the kernel release", "pass it as the kernel package does: hook run KVER")
    results = hook.autoremove(args.kernel, root) if args.removed else hook.autoinstall(args.kernel, root)
    if args.json:
        print_json({"kernel": args.kernel, "results": [r.to_json() for r in results]})
    else:
        for r in results:
            line = f"{r.kernel}: {r.project}: {r.detail}"
            (sys.stdout if r.ok else sys.stderr).write(("" if r.ok else "error: ") + line + "\n")
        if not results:
            sys.stdout.write(f"{args.kernel}: no project is registered below {root}\n")
    return 0 if all(r.ok for r in results) else 1
