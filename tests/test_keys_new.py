"""`kmodkit keys new` / `keys show`: the certificate the kernel's build would make, a key nobody else can read."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import need
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from kmodkit.cli.main import main
from kmodkit.errors import UserError
from kmodkit.signing.algorithms import KeyType
from kmodkit.signing.keys import KeyRequest


def test_rsa_key_and_certificate_as_default_x509_genkey(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = os.umask(0)  # the key's mode must not depend on the umask
    try:
        assert main(["keys", "new", "--out", str(tmp_path), "--bits", "2048", "--cn", "Example Corp modules"]) == 0
    finally:
        os.umask(old)
    out = capsys.readouterr().out
    key = tmp_path / "signing_key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in out and key.read_text() not in out
    cert = x509.load_der_x509_certificate((tmp_path / "signing_cert.der").read_bytes())
    assert cert == x509.load_pem_x509_certificate((tmp_path / "signing_cert.pem").read_bytes())
    assert isinstance(cert.public_key(), rsa.RSAPublicKey) and cert.public_key().key_size == 2048  # type: ignore[union-attr]
    ext = cert.extensions
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    assert ext.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert ExtendedKeyUsageOID.CODE_SIGNING in ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    ski = ext.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == ski
    assert cert.issuer == cert.subject
    # openssl reads the same serial that we print as sig_key
    serial = subprocess.run(["openssl", "x509", "-inform", "DER", "-in", str(tmp_path / "signing_cert.der"),
                             "-noout", "-serial"], capture_output=True, text=True, check=True).stdout
    sig_key = next(line.split(None, 1)[1] for line in out.splitlines() if line.startswith("sig_key:"))
    # compared as numbers: openssl pads the hex to whole bytes (090E...), kmod's form too (09:0E:...)
    assert int(sig_key.replace(":", ""), 16) == int(serial.strip().split("=")[1], 16)
    assert f"mokutil --import {tmp_path / 'signing_cert.der'}" in out


def test_ecdsa_key_and_refusal_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "new", "--out", str(tmp_path), "--type", "ecdsa", "--curve", "P-256", "--json"]) == 0
    capsys.readouterr()
    cert = x509.load_der_x509_certificate((tmp_path / "signing_cert.der").read_bytes())
    pub = cert.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1"
    before = (tmp_path / "signing_key.pem").read_bytes()
    assert main(["keys", "new", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "exists already" in err and "--force" in err and len(err.splitlines()) == 1
    assert (tmp_path / "signing_key.pem").read_bytes() == before


def test_key_request_refuses_what_the_kernel_cannot_verify(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="P-256 and P-384"):
        KeyRequest(str(tmp_path), key_type=KeyType.ECDSA, curve="P-521")
    with pytest.raises(UserError, match="2048 to 16384"):
        KeyRequest(str(tmp_path), bits=1024)
    with pytest.raises(UserError, match="at least one day"):
        KeyRequest(str(tmp_path), days=0)


def test_keys_show_prints_what_modinfo_will_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "new", "--out", str(tmp_path), "--type", "ecdsa"]) == 0
    made = capsys.readouterr().out
    assert main(["keys", "show", str(tmp_path / "signing_cert.pem")]) == 0
    shown = capsys.readouterr().out
    sig_key = next(line.split(None, 1)[1] for line in made.splitlines() if line.startswith("sig_key:"))
    assert f"sig_key: {sig_key}" in shown and "ECDSA 384 bits" in shown


def _pair_matches(directory: Path) -> bool:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from kmodkit.signing.keys import public_keys_match

    key = serialization.load_pem_private_key((directory / "signing_key.pem").read_bytes(), None)
    der = x509.load_der_x509_certificate((directory / "signing_cert.der").read_bytes())
    pem = x509.load_pem_x509_certificate((directory / "signing_cert.pem").read_bytes())
    return der == pem and public_keys_match(key.public_key(), der.public_key())  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.parametrize("nth", range(1, 4))
def test_keys_new_force_killed_at_each_rename_leaves_or_restores_one_pair(tmp_path: Path, nth: int) -> None:
    """SIGKILL delivered by strace at the nth link or rename of 'keys new --force', then the next 'keys new'.

    strace counts each system call apart: nth=1 is the link that puts fileio.commit_files' journal in place
    (and would be the first rename), 2 and 3 the renames of the DER certificate and of the key.

    Before the journal is in place the old pair stays; after it the next run finishes
    the new one; either way no temp file (one holds a private key) is left.
    """
    import shutil
    import signal
    import subprocess
    import sys

    if shutil.which("strace") is None:
        need("needs strace to kill at an exact rename")
    out = tmp_path / "keys"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    new = [sys.executable, "-m", "kmodkit", "keys", "new", "--out", str(out), "--bits", "2048"]
    subprocess.run(new, check=True, capture_output=True, env=env)
    old_cert = (out / "signing_cert.der").read_bytes()
    calls = "link,linkat,rename,renameat,renameat2"  # the journal is linked into place, the files renamed
    killed = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", f"trace={calls}", "-e",
                             f"inject={calls}:signal=KILL:when={nth}", *new, "--force"], capture_output=True, env=env)
    assert killed.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL)
    after_kill_cert = (out / "signing_cert.der").read_bytes()
    if after_kill_cert != old_cert and not _pair_matches(out):  # killed between the renames: sign says how to fix
        module = tmp_path / "m.ko"  # never reached: the key is checked first
        module.write_bytes(b"\x7fELF")
        r = subprocess.run([sys.executable, "-m", "kmodkit", "sign", "--key", str(out / "signing_key.pem"), "--cert",
                            str(out / "signing_cert.der"), str(module)], capture_output=True, text=True, env=env)
        assert r.returncode == 2 and "interrupted 'kmodkit keys new'" in r.stderr
    finish = subprocess.run(new, capture_output=True, text=True, env=env)
    assert finish.returncode in (0, 2), finish.stderr
    assert _pair_matches(out)
    assert sorted(p.name for p in out.iterdir()) == ["signing_cert.der", "signing_cert.pem", "signing_key.pem"]
    # killed at the journal's link the old pair is kept; after it the new one is finished
    assert ((out / "signing_cert.der").read_bytes() == old_cert) == (nth <= 1)
