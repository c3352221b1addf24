"""Bad input to sign and verify: one clear line each, a non-zero exit, no traceback, no file touched.

The corrupt modules are made here from a real one (names say ``made_in_test``).
"""

from __future__ import annotations

import datetime
import hashlib
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from kmodkit.cli.main import main
from kmodkit.modfile import ModuleFile
from kmodkit.modfile.signature import MAGIC

TRAILER = 12 + len(MAGIC)


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("keys")
    assert main(["keys", "new", "--out", str(out), "--bits", "2048", "--cn", "bad input test"]) == 0
    return out


@pytest.fixture
def signed(sample_module: Path, keydir: Path, tmp_path: Path) -> Path:
    """af_key.ko signed with our key (a real module, a real signature)."""
    with ModuleFile.open(sample_module) as mf:
        content = bytes(mf.content)
    path = tmp_path / "af_key.ko"
    path.write_bytes(content)
    assert main(["sign", "--key", str(keydir / "signing_key.pem"), "--cert", str(keydir / "signing_cert.der"),
                 str(path)]) == 0
    return path


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def sign_args(keydir: Path, *extra: str) -> list[str]:
    return ["sign", "--key", str(keydir / "signing_key.pem"), "--cert", str(keydir / "signing_cert.der"), *extra]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sig_len(data: bytes) -> int:
    return int(struct.unpack(">I", data[-TRAILER + 8:-TRAILER + 12])[0])


@pytest.mark.kernel
def test_signature_length_larger_than_file_made_in_test(signed: Path, keydir: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    data = bytearray(signed.read_bytes())
    struct.pack_into(">I", data, len(data) - TRAILER + 8, len(data) * 2)
    signed.write_bytes(data)
    before = digest(signed)
    capsys.readouterr()
    assert main(["verify", "--cert", str(keydir / "signing_cert.der"), str(signed)]) == 1
    out = capsys.readouterr().out
    assert "malformed signature" in out and "only" in out and "bytes precede it" in out
    assert main(sign_args(keydir, "--replace", str(signed))) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "signature trailer claims" in line
    assert digest(signed) == before


@pytest.mark.kernel
def test_garbage_trailer_made_in_test(sample_module: Path, keydir: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    with ModuleFile.open(sample_module) as mf:
        content = bytes(mf.content)
    path = tmp_path / "garbage.ko"
    path.write_bytes(content + b"\xff" * 12 + MAGIC)  # id_type 255, sig_len 0xffffffff
    before = digest(path)
    assert main(["verify", "--cert", str(keydir / "signing_cert.der"), str(path)]) == 1
    assert "malformed signature" in capsys.readouterr().out
    assert main(sign_args(keydir, "--replace", str(path))) == 1
    one_error_line(capsys.readouterr().err)
    assert digest(path) == before


@pytest.mark.kernel
def test_pkcs7_that_does_not_parse_made_in_test(signed: Path, keydir: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    data = bytearray(signed.read_bytes())
    n = _sig_len(bytes(data))
    start = len(data) - TRAILER - n
    data[start:start + n] = b"\x04" * n  # an OCTET STRING header that runs past the end, repeated
    signed.write_bytes(data)
    assert main(["verify", "--cert", str(keydir / "signing_cert.der"), str(signed)]) == 1
    out = capsys.readouterr().out
    assert "malformed signature" in out and "the kernel's parser refuses" in out


@pytest.mark.kernel
def test_unknown_hash_oid_made_in_test(signed: Path, keydir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sha256_oid = bytes.fromhex("0609608648016503040201")
    data = signed.read_bytes()
    assert data.count(sha256_oid) == 2
    signed.write_bytes(data.replace(sha256_oid, bytes.fromhex("060960864801650304027f")))
    assert main(["verify", "--json", "--cert", str(keydir / "signing_cert.der"), str(signed)]) == 1
    import json

    mod = json.loads(capsys.readouterr().out)["modules"][0]
    assert mod["verdict"] == "malformed" and mod["kernel_errno"] == "ENOPKG" and not mod["kernel_fatal"]
    assert mod["detail"] == "signature's digest algorithm 2.16.840.1.101.3.4.2.127 is not one the kernel knows"
    assert mod["kernel_log"] == "Unsupported digest algo:"


@pytest.mark.kernel
def test_pem_certificate_accepted_where_der_expected(sample_module: Path, keydir: Path, tmp_path: Path) -> None:
    with ModuleFile.open(sample_module) as mf:
        content = bytes(mf.content)
    a, b = tmp_path / "a.ko", tmp_path / "b.ko"
    a.write_bytes(content)
    b.write_bytes(content)
    key = str(keydir / "signing_key.pem")
    assert main(["sign", "--key", key, "--cert", str(keydir / "signing_cert.der"), str(a)]) == 0
    assert main(["sign", "--key", key, "--cert", str(keydir / "signing_cert.pem"), str(b)]) == 0
    assert a.read_bytes() == b.read_bytes()
    assert main(["verify", "--cert", str(keydir / "signing_cert.pem"), str(a)]) == 0


@pytest.mark.kernel
def test_expired_certificate_warns_and_still_signs(sample_module: Path, keydir: Path, tmp_path: Path) -> None:
    key_pem = (keydir / "signing_key.pem").read_bytes()
    key = serialization.load_pem_private_key(key_pem, None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "expired")])
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())  # type: ignore[arg-type]
            .serial_number(7).not_valid_before(past).not_valid_after(past + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))  # type: ignore[arg-type]
    cert_path = tmp_path / "expired.der"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    with ModuleFile.open(sample_module) as mf:
        (tmp_path / "m.ko").write_bytes(bytes(mf.content))
    # a real process, so the CLI's own logging setup prints the warning
    res = subprocess.run([sys.executable, "-m", "kmodkit", "sign", "--key", str(keydir / "signing_key.pem"),
                          "--cert", str(cert_path), str(tmp_path / "m.ko")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stderr.startswith("warning: ") and "expired on 2020-01-02" in res.stderr
    assert "the kernel ignores" in res.stderr and len(res.stderr.splitlines()) == 1


@pytest.mark.kernel
def test_group_readable_key_refused_with_the_chmod_that_fixes_it(signed: Path, keydir: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    loose = tmp_path / "loose.pem"
    loose.write_bytes((keydir / "signing_key.pem").read_bytes())
    loose.chmod(0o640)
    before = digest(signed)
    args = ["sign", "--replace", "--key", str(loose), "--cert", str(keydir / "signing_cert.der"), str(signed)]
    assert main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"chmod 600 {loose}" in line and "--allow-insecure-key" in line and "0640" in line
    assert digest(signed) == before
    assert main([*args, "--allow-insecure-key"]) == 0


@pytest.mark.kernel
def test_wrong_passphrase_one_line_no_file_touched(signed: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "enc"
    (tmp_path / "pass").write_text("right horse battery\n")
    (tmp_path / "wrong").write_text("wrong\n")
    assert main(["keys", "new", "--out", str(keys), "--type", "ecdsa", "--passphrase-file", str(tmp_path / "pass")]) == 0
    assert b"ENCRYPTED PRIVATE KEY" in (keys / "signing_key.pem").read_bytes()
    before = digest(signed)
    capsys.readouterr()
    base = ["sign", "--replace", "--key", str(keys / "signing_key.pem"), "--cert", str(keys / "signing_cert.der")]
    assert main([*base, "--passphrase-file", str(tmp_path / "wrong"), str(signed)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "wrong passphrase" in line and "right horse" not in line
    assert digest(signed) == before
    assert main([*base, "--passphrase-file", str(tmp_path / "pass"), str(signed)]) == 0


@pytest.mark.kernel
def test_certificate_given_as_key_and_unknown_hash(signed: Path, keydir: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    before = digest(signed)
    cert = str(keydir / "signing_cert.pem")
    assert main(["sign", "--key", cert, "--cert", cert, "--allow-insecure-key", str(signed)]) == 2
    assert "it looks like a certificate" in one_error_line(capsys.readouterr().err)
    assert main(sign_args(keydir, "--hash", "md5", str(signed))) == 2
    assert "unknown hash algorithm" in one_error_line(capsys.readouterr().err)
    assert main(sign_args(keydir, "--hash", "sha1", str(signed))) == 2
    assert "is not a hash kernels sign modules with" in one_error_line(capsys.readouterr().err)
    assert digest(signed) == before


def test_missing_module_is_one_line(keydir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(sign_args(keydir, str(tmp_path / "absent.ko"))) == 2
    assert "absent.ko" in one_error_line(capsys.readouterr().err)


@pytest.mark.kernel
@pytest.mark.parametrize("field,offset", [("signer_len", 3), ("key_id_len", 4), ("id_type", 2)])
def test_replace_refuses_a_trailer_the_kernel_does_not_read_made_in_test(
        signed: Path, keydir: Path, capsys: pytest.CaptureFixture[str], field: str, offset: int) -> None:
    """Found by the fuzz run: a trailer with signer_len 2 made --replace cut two bytes of the module itself.
    Only a trailer mod_check_sig accepts says where the signature starts; any other is refused, file untouched."""
    data = bytearray(signed.read_bytes())
    data[len(data) - TRAILER + offset] = 2 if field != "id_type" else 1
    signed.write_bytes(data)
    before = digest(signed)
    capsys.readouterr()
    assert main(sign_args(keydir, "--replace", str(signed))) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "its signature trailer is not one the kernel reads" in line
    assert digest(signed) == before
