"""One model of the kernel's signature check: `verify`'s verdict, errno and log line for what the kernel refuses.

Real signatures come from Debian's sign-file, `kmodkit sign` and `openssl cms`
over a real module (af_key.ko of the generic tree, its own signature
stripped); each mutation of the trailer or the PKCS#7 is made here (the test
names say ``made_in_test``).  The expected errno and line are those of
kernel/module_signature.c, kernel/module/signing.c and
crypto/asymmetric_keys/pkcs7_*.c (Debian 6.1.192 and 6.12.117), the same as
../shared/kernel-load-verdicts.md section 2.1.
"""

from __future__ import annotations

import glob
import json
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import need
from kmodkit.cli.main import main
from kmodkit.modfile import ModuleFile
from kmodkit.modfile import der as d
from kmodkit.modfile.signature import MAGIC

TRAILER = 12 + len(MAGIC)
NON_ZERO_PARAMS = "module: PKCS#7 signature info has unexpected non-zero params"


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("key")
    k, c = tmp / "k.pem", tmp / "c.der"
    subprocess.run(["openssl", "req", "-new", "-nodes", "-x509", "-sha256", "-days", "30", "-batch", "-subj",
                    "/CN=kernel check test/", "-newkey", "rsa:2048", "-keyout", str(k), "-outform", "DER",
                    "-out", str(c), "-addext", "subjectKeyIdentifier=hash"], check=True, capture_output=True)
    k.chmod(0o600)
    return k, c


@pytest.fixture(scope="module")
def content(sample_module: Path) -> bytes:
    with ModuleFile.open(sample_module) as mf:
        return bytes(mf.content)


@pytest.fixture(params=["sign-file", "kmodkit"])
def signed(request: pytest.FixtureRequest, content: bytes, key: tuple[Path, Path], tmp_path: Path) -> bytes:
    """The module signed by Debian's sign-file or by `kmodkit sign` (the same bytes for RSA keys)."""
    path = tmp_path / "signed.ko"
    path.write_bytes(content)
    if request.param == "sign-file":
        tools = glob.glob("/usr/lib/linux-kbuild-*/scripts/sign-file")
        if not tools:
            need("Debian's sign-file (linux-kbuild-*)")
        subprocess.run([tools[0], "sha256", str(key[0]), str(key[1]), str(path)], check=True)
    else:
        assert main(["sign", "--key", str(key[0]), "--cert", str(key[1]), str(path)]) == 0
    return path.read_bytes()


def verify_json(data: bytes, cert: Path, tmp: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object]]:
    path = tmp / "m.ko"
    path.write_bytes(data)
    capsys.readouterr()
    status = main(["verify", "--json", "--cert", str(cert), str(path)])
    return status, json.loads(capsys.readouterr().out)["modules"][0]


def pkcs7_of(data: bytes) -> tuple[int, bytes]:
    n = struct.unpack(">I", data[-TRAILER + 8:-TRAILER + 12])[0]
    start = len(data) - TRAILER - n
    return start, data[start:start + n]


def signer_info_version(blob: bytes) -> d.Tlv:
    """The INTEGER version of the first SignerInfo (ContentInfo / [0] / SignedData / signerInfos / SignerInfo)."""
    top = d.read(blob, 0)
    sd = d.children(blob, d.children(blob, d.children(blob, top)[1])[0])
    return d.children(blob, d.children(blob, sd[-1])[0])[0]


@pytest.mark.kernel
def test_signatures_of_sign_file_and_kmodkit_are_accepted(signed: bytes, key: tuple[Path, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    status, doc = verify_json(signed, key[1], tmp_path, capsys)
    assert status == 0 and doc["verdict"] == "valid"
    assert doc["kernel_errno"] is None and doc["kernel_log"] is None and not doc["kernel_fatal"]


@pytest.mark.kernel
@pytest.mark.parametrize("field,offset", [("algo", 0), ("hash", 1), ("signer_len", 3), ("key_id_len", 4),
                                          ("pad0", 5), ("pad1", 6), ("pad2", 7)])
def test_non_zero_trailer_field_is_refused_as_the_kernel_does_made_in_test(
        signed: bytes, key: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        field: str, offset: int) -> None:
    data = bytearray(signed)
    data[len(data) - TRAILER + offset] = 1
    status, doc = verify_json(bytes(data), key[1], tmp_path, capsys)
    assert status == 1 and doc["verdict"] == "malformed"
    assert doc["kernel_errno"] == "EBADMSG" and doc["kernel_fatal"] and doc["kernel_log"] == NON_ZERO_PARAMS
    assert field.rstrip("012") + ("=1" if not field.startswith("pad") else "") in str(doc["detail"])


@pytest.mark.kernel
def test_id_type_other_than_pkcs7_is_unsupported_crypto_made_in_test(
        signed: bytes, key: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = bytearray(signed)
    data[len(data) - TRAILER + 2] = 1  # PKEY_ID_X509
    status, doc = verify_json(bytes(data), key[1], tmp_path, capsys)
    assert status == 1 and doc["verdict"] == "malformed"
    assert doc["kernel_errno"] == "ENOPKG" and not doc["kernel_fatal"]
    assert doc["kernel_log"] == "module: not signed with expected PKCS#7 message"


@pytest.mark.kernel
@pytest.mark.parametrize("change,errno_name,log", [
    ("tag", "EBADMSG", None),  # the ASN.1 decoder's "Unexpected tag" is pr_debug: silent
    ("value", "EINVAL", "PKCS7: Unsupported SignerInfo version"),
    ("value3", "EBADMSG", "PKCS7: SignedData-SignerInfo version mismatch"),
])
def test_changed_signer_info_version_is_refused_by_the_kernel_parser_made_in_test(
        signed: bytes, key: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        change: str, errno_name: str, log: str | None) -> None:
    start, blob = pkcs7_of(signed)
    v = signer_info_version(blob)
    assert (v.tag, blob[v.body:v.end]) == (d.INTEGER, b"\x01")
    data = bytearray(signed)
    if change == "tag":
        data[start + v.start] = d.OCTET_STRING
    else:
        data[start + v.body] = 2 if change == "value" else 3
    status, doc = verify_json(bytes(data), key[1], tmp_path, capsys)
    assert status == 1 and doc["verdict"] == "malformed"
    assert doc["kernel_errno"] == errno_name and doc["kernel_fatal"] and doc["kernel_log"] == log


@pytest.mark.kernel
def test_rsa_signature_oid_other_than_rsa_encryption_is_unsupported_crypto_made_in_test(
        signed: bytes, key: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rsa_encryption, sha256_with_rsa = bytes.fromhex("06092a864886f70d010101"), bytes.fromhex("06092a864886f70d01010b")
    start, blob = pkcs7_of(signed)
    assert blob.count(rsa_encryption) == 1
    data = signed[:start] + blob.replace(rsa_encryption, sha256_with_rsa) + signed[start + len(blob):]
    status, doc = verify_json(data, key[1], tmp_path, capsys)
    assert status == 1 and doc["verdict"] == "malformed"
    assert doc["kernel_errno"] == "ENOPKG" and doc["kernel_log"] == "Unsupported pkey algo:" and not doc["kernel_fatal"]


@pytest.mark.kernel
def test_changed_content_is_rejected_and_unknown_key_is_soft_made_in_test(
        signed: bytes, key: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = bytearray(signed)
    data[100] ^= 0xFF
    status, doc = verify_json(bytes(data), key[1], tmp_path, capsys)
    assert status == 1 and doc["verdict"] == "invalid"
    assert doc["kernel_errno"] == "EKEYREJECTED" and doc["kernel_fatal"] and doc["kernel_log"] is None
    other = tmp_path / "other"
    other.mkdir()
    assert main(["keys", "new", "--out", str(other), "--bits", "2048"]) == 0
    status, doc = verify_json(signed, other / "signing_cert.der", tmp_path, capsys)
    assert status == 1 and doc["verdict"] == "unknown-key"
    assert doc["kernel_errno"] == "ENOKEY" and not doc["kernel_fatal"]


@pytest.mark.kernel
@pytest.mark.parametrize("extra,log", [
    (["-nosmimecap"], "PKCS7: Invalid module sig (has authattrs)"),
    # openssl's default attributes include S/MIME capabilities, which the parser refuses first
    ([], "PKCS7: S/MIME Caps only allowed with Authenticode"),
])
def test_openssl_cms_signature_with_signed_attributes_is_rejected(
        content: bytes, key: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        extra: list[str], log: str) -> None:
    """`openssl cms -sign` without -noattr: the digest holds, but the kernel refuses authenticated attributes."""
    src, sig = tmp_path / "content", tmp_path / "sig.p7"
    src.write_bytes(content)
    subprocess.run(["openssl", "cms", "-sign", "-binary", "-nocerts", "-md", "sha256", "-outform", "DER",
                    "-in", str(src), "-signer", str(key[1]), "-inkey", str(key[0]), "-keyform", "PEM",
                    "-out", str(sig), *extra], check=True, capture_output=True)
    blob = sig.read_bytes()
    data = content + blob + struct.pack(">BBBBB3xI", 0, 0, 2, 0, 0, len(blob)) + MAGIC
    status, doc = verify_json(data, key[1], tmp_path, capsys)
    assert status == 1 and doc["verdict"] == "malformed"
    assert doc["kernel_errno"] == "EKEYREJECTED" and doc["kernel_fatal"]
    assert doc["kernel_log"] == log


@pytest.mark.kernel
def test_text_line_says_the_kernel_refuses_even_without_enforcement_made_in_test(
        signed: bytes, key: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import discover_trees

    trees = [t for t in discover_trees() if t.flavour == "amd64"]
    if not trees:
        need("a generic amd64 kernel")
    data = bytearray(signed)
    data[len(data) - TRAILER] = 1  # algo
    path = tmp_path / "m.ko"
    path.write_bytes(data)
    capsys.readouterr()
    assert main(["verify", "-k", trees[0].release, "--mok", str(key[1]), str(path)]) == 1
    line = capsys.readouterr().out.splitlines()[0]
    assert line.endswith(f"; {trees[0].release} refuses it (EBADMSG: {NON_ZERO_PARAMS}), even where nothing is "
                         "enforced")


def test_model_needs_no_certificate_to_see_a_refused_trailer_made_in_test() -> None:
    """The load explanation calls the model with no trust at all: format refusals do not depend on keys."""
    from kmodkit.signing.kernel_check import check_module_signature
    from kmodkit.signing.trust import TrustStore

    body = b"\x7fELF" + b"\0" * 200

    def with_sig(blob: bytes) -> bytes:
        return body + blob + struct.pack(">BBBBB3xI", 0, 0, 2, 0, 0, len(blob)) + MAGIC

    wrong_tag = check_module_signature(with_sig(b"\x30\x03\x02\x01\x01"), TrustStore())
    assert (wrong_tag.errno_name, wrong_tag.log, wrong_tag.fatal) == ("EBADMSG", None, True)
    data_not_signed = check_module_signature(with_sig(bytes.fromhex("300b06092a864886f70d010701")), TrustStore())
    assert (data_not_signed.errno_name, data_not_signed.log) == ("EINVAL", "PKCS7: Only support pkcs7_signedData type")
    unsigned = check_module_signature(body, TrustStore())
    assert unsigned.errno_name == "ENODATA" and not unsigned.fatal
    assert unsigned.rejection_line() == "Loading of unsigned module is rejected"


@pytest.mark.kernel
def test_load_explanation_and_verify_say_the_same_for_a_refused_trailer_made_in_test(
        signed: bytes, key: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`kmodkit load` explains EBADMSG from the file with the model `verify` uses: the same words."""
    import errno

    from kmodkit.loader.explain import Reason, explain

    data = bytearray(signed)
    data[len(data) - TRAILER + 1] = 4  # hash
    status, doc = verify_json(bytes(data), key[1], tmp_path, capsys)
    why = explain("af_key", errno.EBADMSG, [], sysfs=str(tmp_path), path=str(tmp_path / "m.ko"))
    assert why.reason is Reason.SIGNATURE_REFUSED
    assert str(doc["detail"]) in why.problem and NON_ZERO_PARAMS in why.problem
    # an errno the signature check would not give for this file is left to the other rules
    assert explain("af_key", errno.ENOEXEC, [], sysfs=str(tmp_path), path=str(tmp_path / "m.ko")).reason \
        is Reason.INVALID_FORMAT


@pytest.mark.kernel
def test_load_explains_a_silent_rejection_of_a_debian_signed_module_with_a_changed_byte_made_in_test(
        sample_module: Path, tmp_path: Path) -> None:
    """Booted 6.1: a Debian-signed module with one content byte changed gets EKEYREJECTED and no log line."""
    import errno

    from kmodkit.loader.explain import Reason, explain
    from kmodkit.loader.kmsg import KmsgRecord

    data = bytearray(sample_module.read_bytes())
    data[200] ^= 0xFF
    path = tmp_path / "af_key.ko"
    path.write_bytes(data)
    why = explain("af_key", errno.EKEYREJECTED, [], sysfs=str(tmp_path), path=str(path))
    assert why.reason is Reason.SIGNATURE_REFUSED and "does not match the module's content" in why.problem
    enforced = explain("af_key", errno.EKEYREJECTED,
                       [KmsgRecord(5, 1, 0, "Loading of module with unavailable key is rejected")],
                       sysfs=str(tmp_path), path=str(path))
    assert "does not match" not in enforced.problem and "module with unavailable key" in enforced.problem
