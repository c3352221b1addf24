"""`kmodkit verify` against the keys compiled into Debian's own kernel images, cross-checked with openssl cms."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import KernelTree, need
from kmodkit.cli.main import main
from kmodkit.modfile import ModuleFile
from kmodkit.signing.kernel import kernel_keys
from kmodkit.kimage import read_vmlinux
from kmodkit.signing.kimage import find_certificates
from kmodkit.signing.sign import find_modules
from kmodkit.signing.trust import TrustStore
from kmodkit.signing.verify import Verdict, Verifier


def image_of(tree: KernelTree) -> Path:
    if tree.vmlinuz is None:
        need(f"/boot/vmlinuz-{tree.release}")
    assert tree.vmlinuz is not None
    return tree.vmlinuz


@pytest.fixture(scope="module")
def generic_store(generic_tree: KernelTree) -> TrustStore:
    keys = kernel_keys(vmlinuz=str(image_of(generic_tree)), use_cache=False)
    store = TrustStore()
    for der in keys.certs:
        store.add_der(der, f"vmlinuz-{generic_tree.release}")
    return store


@pytest.fixture(scope="module")
def own_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("own")
    assert main(["keys", "new", "--out", str(out), "--bits", "2048", "--cn", "my own key"]) == 0
    return out / "signing_key.pem", out / "signing_cert.der"


@pytest.mark.kernel
@pytest.mark.slow
def test_extracted_certificates_verify_every_module_of_the_generic_tree(generic_tree: KernelTree,
                                                                      generic_store: TrustStore) -> None:
    paths = [str(p) for p in generic_tree.modules()]
    assert len(paths) > 1000
    results = Verifier(generic_store, generic_tree.release).verify_files(paths, jobs=2)
    bad = [r for r in results if r.verdict is not Verdict.VALID]
    assert not bad, bad[:3]
    assert all(r.kernel_loads == {"enforced": True, "not_enforced": True, "taints": ""} for r in results)


@pytest.mark.kernel
@pytest.mark.parametrize("which", ["cloud_tree", "xz_tree"])
def test_every_payload_format_yields_the_key_that_signed_its_tree(which: str, request: pytest.FixtureRequest) -> None:
    # Debian: generic 6.1 is xz, cloud 6.1 is lz4, 6.12 is zstd; each must give up its certificate list
    tree: KernelTree = request.getfixturevalue(which)
    image, vmlinux = read_vmlinux(str(image_of(tree)))
    assert image.payload_format in ("xz", "lz4", "zstd", "gzip") and vmlinux[:4] == b"\x7fELF"
    certs = find_certificates(vmlinux)
    assert any(c.in_system_list for c in certs)
    store = TrustStore()
    for c in certs:
        if c.in_system_list:
            store.add_der(c.der, image.path)
    sample = [str(p) for p in tree.modules()[::40]]
    results = Verifier(store, tree.release).verify_files(sample, jobs=1)
    assert [r.verdict for r in results] == [Verdict.VALID] * len(sample)


@pytest.mark.kernel
def test_one_flipped_byte_makes_a_module_invalid_and_openssl_agrees(sample_module: Path, generic_store: TrustStore,
                                                                      tmp_path: Path) -> None:
    cert_pem = tmp_path / "kernel.pem"
    cert_pem.write_text(_pem(generic_store.certs[0].der))
    good = tmp_path / "good.ko"
    bad = tmp_path / "bad.ko"
    shutil.copy(sample_module, good)
    data = bytearray(good.read_bytes())
    data[len(data) // 3] ^= 0x01
    bad.write_bytes(data)
    v = Verifier(generic_store)
    assert v.verify_file(str(good)).verdict is Verdict.VALID
    res = v.verify_file(str(bad))
    assert res.verdict is Verdict.INVALID and "does not match" in (res.detail or "")
    assert _openssl_verifies(good, cert_pem, tmp_path) is True
    assert _openssl_verifies(bad, cert_pem, tmp_path) is False


@pytest.mark.kernel
def test_own_key_is_valid_but_not_trusted_by_the_kernel(sample_module: Path, generic_tree: KernelTree,
                                                        own_key: tuple[Path, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    key, cert = own_key
    mod = tmp_path / "af_key.ko"
    shutil.copy(sample_module, mod)
    assert main(["sign", "--replace", "--key", str(key), "--cert", str(cert), str(mod)]) == 0
    capsys.readouterr()
    status = main(["verify", "--vmlinuz", str(image_of(generic_tree)), "--cert", str(cert), str(mod)])
    out = capsys.readouterr().out
    assert status == 1
    assert f"valid signature, key not trusted by {generic_tree.release}" in out
    assert "refuses it where signatures are enforced (module.sig_enforce=1, CONFIG_MODULE_SIG_FORCE, UEFI Secure " \
        "Boot) or it is locked down; elsewhere it loads and taints the kernel (E)" in out
    # enrolled with mokutil, the same key is trusted
    assert main(["verify", "--vmlinuz", str(image_of(generic_tree)), "--mok", str(cert), str(mod)]) == 0
    assert f"{generic_tree.release} accepts it, also where signatures are enforced" in capsys.readouterr().out
    # without the certificate the signature cannot even be checked
    assert main(["verify", "--vmlinuz", str(image_of(generic_tree)), "--json", str(mod)]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["modules"][0]["verdict"] == "unknown-key"
    # an unknown key: refused where signatures are enforced, loads (tainting E) where they are not
    assert doc["modules"][0]["kernel_loads"] == {"enforced": False, "not_enforced": True, "taints": "E"}
    cert_pem = tmp_path / "own.pem"
    subprocess.run(["openssl", "x509", "-inform", "DER", "-in", str(cert), "-out", str(cert_pem)], check=True)
    assert _openssl_verifies(mod, cert_pem, tmp_path) is True


@pytest.mark.kernel
def test_verify_json_and_exit_status_for_unsigned_module(sample_module: Path, own_key: tuple[Path, Path],
                                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ModuleFile.open(sample_module) as mf:
        (tmp_path / "plain.ko").write_bytes(bytes(mf.content))
    assert main(["verify", "--cert", str(own_key[1]), "--json", str(tmp_path / "plain.ko")]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["kernel"] is None and doc["modules"][0]["verdict"] == "unsigned"
    assert "PRIVATE" not in json.dumps(doc)


@pytest.mark.kernel
def test_keys_extract_writes_der_that_verify_uses(generic_tree: KernelTree, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "certs"
    assert main(["keys", "extract", "--vmlinuz", str(image_of(generic_tree)), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    ders = sorted(out.glob("*.der"))
    assert ders and "subject: CN=" in text and "sig_key:" in text
    openssl = subprocess.run(["openssl", "x509", "-inform", "DER", "-in", str(ders[0]), "-noout", "-serial"],
                             capture_output=True, text=True, check=True).stdout
    serial_hex = openssl.strip().split("=", 1)[1]
    # the serial openssl reads is the sig_key modinfo shows for Debian's modules
    sig_key = subprocess.run(["modinfo", "-F", "sig_key", str(generic_tree.modules()[0])], capture_output=True,
                             text=True, check=True).stdout.strip().replace(":", "")
    assert sig_key.upper() == serial_hex.upper().lstrip("0")
    mods = [str(p) for p in generic_tree.modules()[:25]]
    assert main(["verify", "-q", "--certs-dir", str(out), *mods]) == 0
    assert "25 module(s): 25 valid" in capsys.readouterr().out


def test_find_modules_rejects_missing_path(tmp_path: Path) -> None:
    with pytest.raises(Exception) as exc:
        find_modules([str(tmp_path / "nope.ko")])
    assert "nope.ko" in str(exc.value)


def _pem(der: bytes) -> str:
    import base64

    b64 = base64.encodebytes(der).decode().replace("\n", "")
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


def _openssl_verifies(module: Path, cert_pem: Path, tmp: Path) -> bool:
    with ModuleFile.open(module) as mf:
        blob = mf.signature_blob()
        assert blob is not None
        sig, content = tmp / "sig.p7", tmp / "content.bin"
        sig.write_bytes(blob)
        content.write_bytes(bytes(mf.content))
    res = subprocess.run(["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(sig),
                          "-content", str(content), "-certfile", str(cert_pem), "-noverify", "-out", os.devnull],
                         capture_output=True, text=True)
    return res.returncode == 0


@pytest.mark.kernel
def test_verify_request_trusts_the_named_kernel_and_mok_but_not_plain_certificates(
        generic_tree: KernelTree, own_key: tuple[Path, Path], tmp_path: Path) -> None:
    """The trust rule `verify` maps its flags onto, as a library object."""
    from kmodkit.errors import UserError
    from kmodkit.signing.verify import VerifyRequest

    image, cert = str(image_of(generic_tree)), str(own_key[1])
    store, kernel = VerifyRequest(certs=(cert,), vmlinuz=image).trust_store()
    assert kernel == generic_tree.release
    assert {(c.source, c.trusted) for c in store.certs} == {(f"vmlinuz-{kernel}", True), (cert, False)}
    store, kernel = VerifyRequest(certs=(cert,)).trust_store()
    assert kernel is None and [(c.source, c.trusted) for c in store.certs] == [(cert, True)]
    store, _ = VerifyRequest(mok=(cert,), kernel_release=generic_tree.release).trust_store()
    assert (cert, True) in {(c.source, c.trusted) for c in store.certs}
    with pytest.raises(UserError, match="both named"):
        VerifyRequest(kernel_release=generic_tree.release, vmlinuz=image)


@pytest.mark.kernel
def test_extract_certificates_names_files_by_kernel_index_and_common_name(generic_tree: KernelTree,
                                                                          tmp_path: Path) -> None:
    from kmodkit.signing.kernel import cert_file_name, extract_certificates

    assert cert_file_name("6.1.0-57-amd64", 3, "O=Debian,CN=Debian Secure Boot CA (2021)") == \
        "6.1.0-57-amd64-03-debian-secure-boot-ca-2021.der"
    assert cert_file_name("k", 0, "O=no common name") == "k-00-o-no-common-name.der"
    keys = kernel_keys(vmlinuz=str(image_of(generic_tree)))
    written = extract_certificates(keys, str(tmp_path / "new" / "dir"))
    assert [Path(w.path).name for w in written] == [cert_file_name(keys.label, i, w.cert.subject)
                                                     for i, w in enumerate(written)]
    assert [Path(w.path).read_bytes() for w in written] == list(keys.certs)


def test_verify_takes_several_kernels_and_answers_for_each(generic_tree: KernelTree, cloud_tree: KernelTree,
                                                           sample_module: Path) -> None:
    """0.1 kept only the last -k; each module is now verified for each kernel named."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "kmodkit", "verify", "-k", generic_tree.release, "-k",
                           cloud_tree.release, "--json", str(sample_module)], capture_output=True, text=True)
    doc = json.loads(done.stdout)
    assert doc["kernels"] == [generic_tree.release, cloud_tree.release]
    by_kernel = {m["kernel"]: m for m in doc["modules"]}
    assert by_kernel[generic_tree.release]["verdict"] == "valid"
    # the cloud build's key is another autogenerated key: the generic kernel's own module is not trusted there
    assert by_kernel[cloud_tree.release]["verdict"] in ("unknown-key", "untrusted")
    assert by_kernel[cloud_tree.release]["kernel_loads"]["enforced"] is False
    assert done.returncode == 1
