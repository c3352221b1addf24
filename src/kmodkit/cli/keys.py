"""``kmodkit keys``: make a module-signing key; extract or show the certificates a kernel trusts."""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    new = sub.add_parser("new", help="make a signing key and self-signed certificate (as the kernel's build does)",
                         description="Make a private key (PEM, mode 0600) and a self-signed X.509 certificate "
                         "(DER and PEM) for signing modules; print its sig_key and the mokutil command.")
    new.add_argument("--out", required=True, metavar="DIR", help="directory for signing_key.pem and signing_cert.*")
    new.add_argument("--type", choices=("rsa", "ecdsa"), default="rsa", help="key algorithm (default rsa)")
    new.add_argument("--bits", type=int, default=4096, help="RSA key size (default 4096, as the kernel's build)")
    new.add_argument("--curve", choices=("P-256", "P-384"), default="P-384", help="ECDSA curve (default P-384)")
    new.add_argument("--hash", default="sha256", help="digest of the certificate's self-signature (default sha256)")
    new.add_argument("--cn", default="kmodkit module signing key", help="the certificate's common name")
    new.add_argument("--days", type=int, default=36500, help="validity in days (default 36500, as the kernel's)")
    new.add_argument("--passphrase-file", metavar="FILE", help="encrypt the private key with the first line of FILE")
    new.add_argument("--force", action="store_true", help="replace key files that exist already")
    new.add_argument("--json", action="store_true", help="print the result as JSON")

    ext = sub.add_parser("extract", help="write the certificates compiled into a kernel image",
                         description="Extract the system certificate list (the keys the kernel trusts for "
                         "modules) from a kernel image; write each certificate as DER.")
    src = ext.add_mutually_exclusive_group(required=True)
    src.add_argument("--vmlinuz", metavar="PATH", help="kernel image (bzImage) or vmlinux")
    src.add_argument("-k", "--kernel", dest="kver", metavar="KVER", help="installed kernel release (/boot/vmlinuz-KVER)")
    ext.add_argument("--out", required=True, metavar="DIR", help="directory for the .der files")
    ext.add_argument("--json", action="store_true", help="print the result as JSON")

    show = sub.add_parser("show", help="show certificates as the kernel and modinfo name their keys")
    show.add_argument("certs", nargs="+", metavar="CERT", help="certificate file (DER or PEM)")
    show.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    if args.keys_command == "new":
        return _new(args)
    if args.keys_command == "extract":
        return _extract(args)
    return _show(args)


def _new(args: argparse.Namespace) -> int:
    from kmodkit.cli.output import print_json
    from kmodkit.signing.algorithms import HashAlgorithm, KeyType
    from kmodkit.signing.keys import KeyRequest, create_key

    passphrase = read_passphrase_file(args.passphrase_file) if args.passphrase_file else None
    req = KeyRequest(out_dir=args.out, key_type=KeyType(args.type), bits=args.bits, curve=args.curve,
                     hash=HashAlgorithm.from_name(args.hash), common_name=args.cn, days=args.days,
                     passphrase=passphrase, overwrite=args.force)
    made = create_key(req)
    if args.json:
        print_json(made)
        return 0
    w = sys.stdout.write
    w(f"private key:  {made.key_path} (mode 0600{', encrypted' if made.encrypted else ''}; keep it secret)\n")
    w(f"certificate:  {made.cert_der_path} (DER), {made.cert_pem_path} (PEM)\n")
    w(f"subject:      {made.subject}\n")
    w(f"sig_key:      {made.sig_key}\n")
    w(f"  (with --keyid: {made.subject_key_id})\n")
    w("enrol it for Secure Boot (then reboot and confirm in MokManager):\n")
    w("  " + " ".join(made.mokutil_command) + "\n")
    return 0


def _extract(args: argparse.Namespace) -> int:
    from kmodkit.cli.output import print_json
    from kmodkit.signing.kernel import extract_certificates, kernel_keys

    keys = kernel_keys(release=args.kver, vmlinuz=args.vmlinuz, use_cache=False)
    written = extract_certificates(keys, args.out)
    if args.json:
        print_json({"image": keys.image, "kernel": keys.label, "certificates": written})
        return 0
    for one in written:
        cert = one.cert
        sys.stdout.write(f"{one.path}\n  subject: {cert.subject}\n  sig_key: {cert.key_id}\n")
        if cert.subject_key_id:
            sys.stdout.write(f"  subject key id: {cert.subject_key_id}\n")
        sys.stdout.write(f"  key: {cert.key_type.value.upper()} {cert.key_bits} bits\n")
    sys.stdout.write(f"{len(written)} certificate(s) from {keys.image}\n")
    return 0


def _show(args: argparse.Namespace) -> int:
    from kmodkit.cli.output import print_json
    from kmodkit.signing.keys import expiry_warning, load_certificate
    from kmodkit.signing.trust import make_trusted_cert

    docs = []
    for path in args.certs:
        cert = load_certificate(path)
        from cryptography.hazmat.primitives.serialization import Encoding

        info = make_trusted_cert(cert.public_bytes(Encoding.DER), path)
        warn = expiry_warning(cert, path)
        doc = {"file": path, **info.to_json(), "not_after": cert.not_valid_after_utc.isoformat(), "warning": warn}
        docs.append(doc)
        if not args.json:
            sys.stdout.write(f"{path}\n  subject: {info.subject}\n  sig_key: {info.key_id}\n")
            if info.subject_key_id:
                sys.stdout.write(f"  subject key id: {info.subject_key_id}\n")
            sys.stdout.write(f"  key: {info.key_type.value.upper()} {info.key_bits} bits, "
                             f"valid until {cert.not_valid_after_utc:%Y-%m-%d}\n")
            if warn:
                sys.stderr.write(f"warning: {warn}\n")
    if args.json:
        print_json(docs)
    return 0


def read_passphrase_file(path: str) -> bytes:
    """The first line of ``path`` as the passphrase (UserError when it is empty or unreadable)."""
    from kmodkit.errors import UserError, from_oserror

    try:
        with open(path, "rb") as f:
            line = f.readline().rstrip(b"\r\n")
    except OSError as exc:
        raise from_oserror(exc, path) from None
    if not line:
        raise UserError(path, "passphrase file is empty", "write the passphrase on its first line")
    return line
