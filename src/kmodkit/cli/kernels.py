"""``kmodkit kernels list|fetch|prune``: kernels installed here, fetched from the archive into the cache, or offered.

Exit status: 0; 1 when a fetch failed for some kernels (each is reported, the rest fetched); 2 for a
kernel the archive does not have; 3 when the archive cannot be reached.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kmodkit.archive.fetch import Fetch, FetchResult
    from kmodkit.errors import ItemError


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="kernels_command", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="kernels installed and fetched (and, with --available, in the archive)",
                        description="Kernels -k KVER can name: installed here and fetched into kmodkit's cache; "
                                    "with --available, every kernel the distro's archive offers too.")
    ls.add_argument("--available", action="store_true", help="also the kernels the archive offers (asks apt-cache)")
    ls.add_argument("--flavour", metavar="F", help="only this flavour (cloud-amd64, amd64, rt-amd64)")
    ls.add_argument("--json", action="store_true", help="print the list as JSON")
    ls.set_defaults(handler=_list)

    fetch = sub.add_parser("fetch", help="download kernels' headers (and image+modules) into the cache",
                           description="Download each kernel's packages with the distro's package tool (which "
                                       "verifies them) and unpack them into kmodkit's cache without installing "
                                       "anything; -k KVER of build, check, verify, index, info, deps and vm run then "
                                       "find the kernel as an installed one.")
    fetch.add_argument("releases", nargs="*", metavar="KVER", help="kernel releases (kernels list --available)")
    fetch.add_argument("--latest", type=int, metavar="N",
                       help="the newest N kernels of the archive that are not installed here")
    fetch.add_argument("--flavour", metavar="F", help="with --latest: only this flavour (e.g. cloud-amd64)")
    fetch.add_argument("--headers-only", action="store_true",
                       help="only what build needs (no image and modules: check, verify -k and vm run need those)")
    fetch.add_argument("--force", action="store_true", help="unpack again even when the kernel is in the cache")
    fetch.add_argument("--json", action="store_true", help="print the results as JSON")
    fetch.set_defaults(handler=_fetch)

    prune = sub.add_parser("prune", help="remove fetched kernels and their package files; say how much was freed")
    prune.add_argument("releases", nargs="*", metavar="KVER", help="fetched kernels to remove")
    prune.add_argument("--all", action="store_true", help="remove every fetched kernel and every kept package file")
    prune.add_argument("--json", action="store_true", help="print what was removed as JSON")
    prune.set_defaults(handler=_prune)


def run(args: argparse.Namespace) -> int:
    return int(args.handler(args))


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _list(args: argparse.Namespace) -> int:
    from kmodkit.archive.fetch import check_flavour, flavour_matches
    from kmodkit.archive.store import fetched_kernels
    from kmodkit.kbuild.kernels import installed_kernels, version_key

    check_flavour(args.flavour)
    rows: dict[str, dict[str, object]] = {}
    for k in installed_kernels():
        rows[k.release] = {"release": k.release, "installed": True, "fetched": False,
                           "headers": k.headers_complete, "image": (k.moddir / "kernel").is_dir(),
                           "available": None, "size": None, "root": "/"}
    for f in fetched_kernels():
        row = rows.setdefault(f.release, {"release": f.release, "installed": False, "headers": f.headers,
                                          "image": f.image, "available": None, "root": str(f.root)})
        row["fetched"], row["size"] = True, f.size
    if args.available:
        from kmodkit.archive import tool as archive

        for release, kinds in archive.available(archive.tool_for()).items():
            row = rows.setdefault(release, {"release": release, "installed": False, "fetched": False,
                                            "headers": False, "image": False, "size": None, "root": None})
            row["available"] = sorted(kinds)
    shown = [rows[r] for r in sorted(rows, key=version_key, reverse=True) if flavour_matches(r, args.flavour)]
    if args.json:
        from kmodkit.cli.output import print_json

        print_json({"kernels": shown})
        return 0
    out = sys.stdout
    if not shown:
        out.write("no kernels (kmodkit kernels list --available names the archive's)\n")
        return 0
    for row in shown:
        where = "installed" if row["installed"] else "fetched" if row["fetched"] else "archive"
        has = [w for w in ("headers", "image") if row[w]]
        extra = ""
        if row.get("fetched") and row["installed"]:
            extra = " (also fetched; the installed one is used)"
        elif row["fetched"] and isinstance(row["size"], int):
            extra = f"  {_size(row['size'])}"
        offered = row["available"]
        if isinstance(offered, list) and not row["installed"] and not row["fetched"]:
            has = ["offers " + "+".join(str(a) for a in offered)]
        out.write(f"{row['release']:<36} {where:<10} {', '.join(has) or 'nothing'}{extra}\n")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from kmodkit.archive.fetch import Fetch, FetchResult
    from kmodkit.cli.output import print_json, report_item
    from kmodkit.errors import ItemError

    job = Fetch(list(args.releases), args.latest, args.flavour, args.headers_only, args.force)
    if not job.tool.tested:
        sys.stderr.write(f"warning: fetching from the {job.tool.family} archive is untested\n")
    results = _with_progress(job) if sys.stderr.isatty() and not args.json else job.run()
    failed = [r for r in results if isinstance(r, ItemError)]
    if args.json:
        print_json({"verified_by": job.tool.verified, "kernels": [
            r.to_json() if isinstance(r, FetchResult) else {"release": r.path, "error": r.message, "fix": r.fix}
            for r in results]})
    else:
        for r in results:
            if isinstance(r, ItemError):
                report_item(r)
                continue
            k = r.kernel
            what = "headers" + (", image and modules" if k.image else "")
            how = (f"downloaded {_size(r.downloaded)}" if r.downloaded else "nothing downloaded") \
                + (f", {r.reused} package files from the cache" if r.reused else "")
            verb = "fetched" if r.outcome.value == "fetched" else "already fetched"
            sys.stdout.write(f"{k.release}: {verb}: {what} ({how}); {_size(k.size)} in {k.root}\n")
    if len(failed) == len(results) and failed:
        return max(f.exit_status for f in failed)
    return 1 if failed else 0


def _with_progress(job: Fetch) -> list[FetchResult | ItemError]:
    """Run ``job`` with a transient progress bar per step on stderr (rich): MiB for downloads, packages else."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress as Bar, TaskID, TextColumn, TimeElapsedColumn

    tasks: dict[str, TaskID] = {}
    with Bar(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[amount]}"),
             TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
        def progress(what: str, done: int, total: int) -> None:
            amount = f"{done / 2**20:.1f}/{total / 2**20:.1f} MiB" if what.startswith("download") else \
                f"{done}/{total} packages" if what.startswith("unpack") else ""
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=total or None, amount=amount)
            bar.update(tasks[what], completed=done, total=total or None, amount=amount)

        return job.run(progress)


def _prune(args: argparse.Namespace) -> int:
    from kmodkit.archive.store import prune
    from kmodkit.cli.output import print_json
    from kmodkit.errors import UserError

    if bool(args.releases) == bool(args.all):
        raise UserError("kernels prune", "name fetched kernels or give --all (one of the two)",
                        "kmodkit kernels list names the fetched ones")
    done = prune(None if args.all else list(args.releases))
    if args.json:
        print_json({"removed": list(done.releases), "packages": list(done.packages), "freed": done.freed})
    else:
        for r in done.releases:
            sys.stdout.write(f"removed {r}\n")
        sys.stdout.write(f"freed {_size(done.freed)} ({len(done.releases)} kernels, "
                         f"{len(done.packages)} package files)\n")
    return 0
