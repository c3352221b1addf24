"""``kmodkit kmm``: a project as Kernel Module Management resources (Module, Dockerfile ConfigMap, preflight)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from kmodkit.cli.options import project_and_kernels


def configure(parser: argparse.ArgumentParser) -> None:
    project_and_kernels(parser, "map", note="need not be installed unless --prebuilt; ")
    parser.add_argument("--image", metavar="REGISTRY/NAME",
                        help="where the kmod images are pushed and pulled; each is tagged with its kernel's release")
    parser.add_argument("--prebuilt", action="store_true",
                        help="map images you build from 'kmodkit build's out/KVER (one per kernel) instead of "
                        "building in the cluster")
    parser.add_argument("--flavour-regexp", action="store_true",
                        help="one regexp mapping per flavour (^.+-cloud-amd64$) instead of one literal per kernel: "
                        "nodes on a newer ABI are built for in the cluster without regenerating")
    parser.add_argument("--namespace", default="default", metavar="NS",
                        help="the namespace of the Module and its ConfigMap (default: default)")
    parser.add_argument("--next-kernel", metavar="KVER",
                        help="also map this kernel and write a PreflightValidation for an upgrade to it")
    parser.add_argument("--no-sign", action="store_true",
                        help="no sign section even when kmodkit.toml names a key")
    parser.add_argument("--base-image", metavar="IMAGE",
                        help="the base image of the Dockerfile's stages (default: this machine's distro, e.g. "
                        "debian:12)")
    parser.add_argument("--out", metavar="DIR",
                        help="write kmm.yaml and Dockerfile into DIR (default: the YAML on standard output)")
    parser.add_argument("--json", action="store_true",
                        help="print the documents and what is left to do (Secrets, images) as one JSON object")


def run(args: argparse.Namespace) -> int:
    from kmodkit.kmm.export import KmmExport

    out = Path(args.out).resolve() if args.out else None
    job = KmmExport(Path(args.project), args.image, kernels=args.kernels, all_installed=args.all_installed,
                    prebuilt=args.prebuilt, namespace=args.namespace, next_kernel=args.next_kernel,
                    flavour_regexp=args.flavour_regexp, sign=not args.no_sign, base_image=args.base_image, out=out)
    result = job.render()
    if args.json:
        from kmodkit.cli.output import print_json

        written = result.write(out) if out is not None else []
        print_json(dict(result.to_json(), files=[str(p) for p in written]))
        return 0
    say = sys.stdout.write if out is not None else sys.stderr.write
    if out is None:
        sys.stdout.write(result.yaml())
    else:
        for path in result.write(out):
            say(f"wrote {path}\n")
    say(f"{result.namespace}/{result.name}: {len(result.kernels)} kernel(s), loading "
        f"{' then '.join(result.load_order)}\n")
    if result.secrets:
        say("KMM signs in the cluster with the key and certificate in these Secrets (kmodkit writes neither); "
            "create them once:\n")
        for secret in result.secrets:
            say(f"  {secret.command(result.namespace)}\n")
    if result.images:
        dockerfile = shlex.quote(str(out / "Dockerfile")) if out else "Dockerfile"
        say("build and push one image per kernel from the project directory:\n")
        for kernel, image in result.images:
            say(f"  docker build -f {dockerfile} --build-arg KERNEL_FULL_VERSION={shlex.quote(kernel)} "
                f"-t {shlex.quote(image)} {shlex.quote(str(job.project))} && docker push {shlex.quote(image)}\n")
    for note in result.notes:
        say(f"note: {note}\n")
    return 0
