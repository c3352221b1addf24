"""``kmodkit sign``: sign modules in place, byte-identical to the kernel's sign-file for RSA keys."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kmodkit.signing.source import KeySource

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("targets", nargs="+", metavar="MODULE|DIR", help="module files, or directories to search")
    parser.add_argument("--key", required=True, help="private key (PEM file) or a pkcs11: URI")
    parser.add_argument("--cert", required=True, help="the key's X.509 certificate (DER or PEM)")
    parser.add_argument("--hash", default="sha256", help="digest: sha256 (default), sha384 or sha512")
    parser.add_argument("--keyid", action="store_true",
                        help="name the key by subjectKeyIdentifier instead of issuer and serial (sign-file -k)")
    parser.add_argument("--replace", action="store_true",
                        help="re-sign modules that are signed already (without it, a module this key signed with this "
                             "digest is left as it is, and one signed otherwise is refused)")
    parser.add_argument("--passphrase-file", metavar="FILE",
                        help="passphrase (or token PIN) on the first line of FILE; else KBUILD_SIGN_PIN, else a prompt")
    parser.add_argument("--allow-insecure-key", action="store_true",
                        help="use a private key file that group or others can read")
    parser.add_argument("-j", "--jobs", type=int, default=None, help="worker processes (default: CPUs)")
    parser.add_argument("--json", action="store_true", help="print one JSON record per module")


def run(args: argparse.Namespace) -> int:
    from kmodkit.cli.output import print_json, report_item
    from kmodkit.signing.algorithms import HashAlgorithm
    from kmodkit.signing.keys import expiry_warning, load_certificate
    from kmodkit.signing.sign import ModuleSigner, SignStatus, gather_modules

    alg = HashAlgorithm.from_name(args.hash)
    paths, missing = gather_modules(args.targets)  # every path checked before a key is touched
    for err in missing:
        report_item(err)
    if not paths:
        return max((e.exit_status for e in missing), default=2)
    cert = load_certificate(args.cert)
    warn = expiry_warning(cert, args.cert)
    if warn:
        log.warning("%s", warn)
    key = open_key(args.key, args.passphrase_file, args.allow_insecure_key)
    try:
        signer = ModuleSigner(key, cert, alg, use_key_id=args.keyid, replace=args.replace, cert_name=args.cert)
        results = signer.sign_files(paths, jobs=args.jobs)
    finally:
        close = getattr(key, "close", None)
        if close is not None:
            close()
    failed = 0
    for r in results:
        if r.status is SignStatus.FAILED:
            failed += 1
            if not args.json and r.error is not None:
                report_item(r.error)
        elif args.json:
            pass
        elif r.status is SignStatus.ALREADY_SIGNED:
            sys.stdout.write(f"already signed by {args.key} ({r.signer}, {alg.value}) {r.path}\n")
        else:
            sys.stdout.write(f"{r.status.value} {r.path}\n")
    already = sum(r.status is SignStatus.ALREADY_SIGNED for r in results)
    if args.json:
        print_json(results)
    elif len(results) > 1:
        sys.stdout.write(f"{len(results) - failed - already} of {len(results)} module(s) signed"
                         f"{f', {already} already signed by this key' if already else ''}"
                         f"{f', {failed} failed' if failed else ''}\n")
    return max([1 if failed else 0] + [e.exit_status for e in missing])


def open_key(spec: str, passphrase_file: str | None, allow_insecure: bool) -> KeySource:
    """The key named by ``spec`` (a PEM file or a pkcs11: URI), asking for a passphrase only when needed."""
    from kmodkit.signing.keys import key_is_encrypted, load_private_key
    from kmodkit.signing.source import FileKey

    secret = _secret(passphrase_file)
    if spec.startswith("pkcs11:"):
        from kmodkit.signing.pkcs11 import Pkcs11Key

        return Pkcs11Key(spec, pin=secret.decode() if secret else None)
    if secret is None and key_is_encrypted(spec) and sys.stdin.isatty():
        import getpass

        secret = getpass.getpass(f"passphrase for {spec}: ").encode()
    return FileKey(load_private_key(spec, secret, allow_insecure), spec)


def _secret(passphrase_file: str | None) -> bytes | None:
    # sign-file reads the key's passphrase (and a token's PIN) from KBUILD_SIGN_PIN
    if passphrase_file:
        from kmodkit.cli.keys import read_passphrase_file

        return read_passphrase_file(passphrase_file)
    pin = os.environ.get("KBUILD_SIGN_PIN")
    return pin.encode() if pin else None
