"""``kmodkit deps``: resolve what loading a module takes, as modprobe does, without loading."""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the command's options."""
    parser.add_argument("names", metavar="NAME|ALIAS", nargs="+", help="module names or aliases")
    parser.add_argument("-k", "--kver", "-S", "--set-version", dest="kver", metavar="KVER",
                        help="kernel release (default: the running kernel)")
    parser.add_argument("-b", "-d", "--basedir", "--dirname", dest="basedir", metavar="BASEDIR",
                        help="root of a module tree image (default /)")
    parser.add_argument("-C", "--config", metavar="PATH", action="append",
                        help="modprobe.d directory or file (repeatable; default: the system's)")
    parser.add_argument("--no-cmdline", action="store_true",
                        help="ignore module options on /proc/cmdline (modprobe reads them)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--show-depends", action="store_true",
                      help="print what 'modprobe -a --show-depends' prints (default)")
    mode.add_argument("--reverse", action="store_true", help="list the modules that depend on each NAME")
    mode.add_argument("--why", action="store_true", help="show the dependency chain from the first NAME to the second")
    mode.add_argument("--tree", action="store_true", help="show direct dependencies as a tree")
    parser.add_argument("--json", action="store_true", help="print plans as JSON")


def run(args: argparse.Namespace) -> int:
    """Resolve every name; 1 when a name is unknown (every name is still reported), as modprobe exits."""
    from kmodkit.cli.output import error_line, print_json
    from kmodkit.errors import UserError, error_object
    from kmodkit.index.config import ModprobeConfig
    from kmodkit.index.lookup import ModuleTree, kernel_dir
    from kmodkit.index.resolver import Resolver
    from kmodkit.modfile.modname import normalize_name

    dirname = kernel_dir(args.kver, args.basedir)
    tree = ModuleTree(dirname)
    tree.config = ModprobeConfig.load(dirname, args.config, "" if args.no_cmdline else None)
    resolver = Resolver(tree)
    out = sys.stdout
    if args.why:
        if len(args.names) != 2:
            raise UserError("--why", "takes exactly two names: FROM TO")
        src, dst = (normalize_name(n) for n in args.names)
        chain = resolver.why(src, dst)
        if args.json:
            print_json({"from": src, "to": dst, "chain": chain})
        elif chain is None:
            out.write(f"{src} does not depend on {dst}\n")
        else:
            out.write(" -> ".join(chain) + "\n")
        return 0 if chain is not None else 1
    status = 0
    results: list[object] = []
    warned: set[str] = set()
    for name in args.names:
        norm = normalize_name(name)
        if args.reverse or args.tree:
            if tree.lookup_name(norm) is None:
                error_line(name, f"no such module in {dirname}", 1)
                status = 1
                continue
            if args.reverse:
                users = resolver.reverse_dependencies(norm)
                results.append({"module": norm, "used_by": users})
                if not args.json:
                    out.writelines(f"{u}\n" for u in users)
            else:
                lines = resolver.tree_lines(norm)
                cycles = resolver.softdep_cycles(norm)
                results.append({"module": norm, "tree": lines, "cycles": cycles})
                if not args.json:
                    out.writelines(f"{line}\n" for line in lines)
                    for cycle in cycles:  # reported, not a failure: the exit status stays 0
                        sys.stderr.write(f"warning: {norm}: cycle: {' -> '.join(cycle)}\n")
            continue
        plan = resolver.probe_list(name)
        for path in plan.missing:  # modprobe lists what it can and exits 0: a warning, not a failure
            if path not in warned:
                warned.add(path)
                sys.stderr.write(f"warning: {path}: listed in modules.dep but missing; "
                                 "reinstall the module or rerun kmodkit index\n")
        if plan.not_found:
            # one error line per item, "error: SUBJECT: PROBLEM"; modprobe's own words after the subject
            status = 1
            why = f"Module {name} not found in directory {dirname}"
            if args.json:  # the plan's record, in its place, carries the error object
                results.append({**plan.to_json(), "error": error_object(name, why, None, 1)})
                continue
            error_line(name, why, 1)
        results.append(plan)
        if not args.json:
            lines = plan.show_depends()
            if lines:
                out.write("\n".join(lines) + "\n")
    if args.json:
        print_json(results)
    return status
