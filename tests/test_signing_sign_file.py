"""`kmodkit sign` against the kernel's own sign-file (Debian's linux-kbuild) and kmod's modinfo.

The oracle is every sign-file installed under /usr/lib/linux-kbuild-*, found at
run time; keys are made by the openssl CLI so the test does not trust our
own key generation.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import KernelTree, need
from kmodkit.cli.main import main
from kmodkit.modfile import ModuleFile
from kmodkit.modfile.compress import Compression, compress, detect
from kmodkit.signing.algorithms import HashAlgorithm
from kmodkit.signing.keys import load_certificate, load_private_key
from kmodkit.signing.sign import ModuleSigner, SignStatus, strip_signatures
from kmodkit.signing.source import FileKey


def sign_file_tools() -> list[str]:
    tools = sorted(glob.glob("/usr/lib/linux-kbuild-*/scripts/sign-file"))
    if not tools:
        need("Debian's sign-file (linux-kbuild-*)")
    return tools


def openssl_key(tmp: Path, name: str, args: list[str], cn: str) -> tuple[Path, Path]:
    key, cert = tmp / f"{name}.pem", tmp / f"{name}.der"
    subprocess.run(["openssl", "req", "-new", "-nodes", "-utf8", "-sha256", "-days", "36500", "-batch", "-x509",
                    "-subj", f"/CN={cn}/", *args, "-keyout", str(key), "-outform", "DER", "-out", str(cert),
                    "-addext", "subjectKeyIdentifier=hash"], check=True, capture_output=True)
    key.chmod(0o600)
    return key, cert


@pytest.fixture(scope="module")
def rsa_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return openssl_key(tmp_path_factory.mktemp("rsa"), "rsa", ["-newkey", "rsa:2048"], "kmodkit test RSA")


@pytest.fixture(scope="module")
def ec_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return openssl_key(tmp_path_factory.mktemp("ec"), "ec", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
                       "kmodkit test EC")


@pytest.fixture(scope="module")
def unsigned(sample_module: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """af_key.ko with Debian's signature stripped."""
    with ModuleFile.open(sample_module) as mod:
        assert mod.is_signed
        return bytes(mod.content)


def some_modules(tree: KernelTree, count: int) -> list[Path]:
    mods = tree.modules()
    step = max(1, len(mods) // count)
    return mods[::step][:count]


def signer_for(key: Path, cert: Path, alg: HashAlgorithm = HashAlgorithm.SHA256, **kw: bool) -> ModuleSigner:
    return ModuleSigner(FileKey(load_private_key(str(key), None), str(key)), load_certificate(str(cert)), alg, **kw)


@pytest.mark.kernel
@pytest.mark.parametrize("keyid", [False, True], ids=["issuer-serial", "keyid"])
@pytest.mark.parametrize("alg", ["sha256", "sha384", "sha512"])
def test_byte_identical_to_sign_file(generic_tree: KernelTree, rsa_key: tuple[Path, Path], tmp_path: Path,
                                     alg: str, keyid: bool) -> None:
    key, cert = rsa_key
    signer = signer_for(key, cert, HashAlgorithm.from_name(alg), use_key_id=keyid)
    for tool in sign_file_tools():
        for mod in some_modules(generic_tree, 4):
            with ModuleFile.open(mod) as mf:
                content = bytes(mf.content)
            ours, theirs = tmp_path / "ours.ko", tmp_path / "theirs.ko"
            ours.write_bytes(content)
            theirs.write_bytes(content)
            subprocess.run([tool, *(["-k"] if keyid else []), alg, str(key), str(cert), str(theirs)], check=True)
            assert signer.sign_file(str(ours)).status is SignStatus.SIGNED
            assert ours.read_bytes() == theirs.read_bytes(), f"{tool} vs kmodkit differ for {mod.name}"


@pytest.mark.kernel
def test_modinfo_shows_the_same_signature_fields(unsigned: bytes, rsa_key: tuple[Path, Path], tmp_path: Path) -> None:
    key, cert = rsa_key
    ours, theirs = tmp_path / "a.ko", tmp_path / "b.ko"
    ours.write_bytes(unsigned)
    theirs.write_bytes(unsigned)
    subprocess.run([sign_file_tools()[0], "sha256", str(key), str(cert), str(theirs)], check=True)
    assert main(["sign", "--key", str(key), "--cert", str(cert), str(ours)]) == 0
    fields = ("signer", "sig_key", "sig_hashalgo", "signature")

    def modinfo(path: Path) -> list[str]:
        out = []
        for f in fields:
            out.append(subprocess.run(["modinfo", "-F", f, str(path)], capture_output=True, text=True, check=True).stdout)
        return out

    got, want = modinfo(ours), modinfo(theirs)
    assert got == want
    assert got[0].strip() == "kmodkit test RSA" and got[2].strip() == "sha256"


@pytest.mark.kernel
@pytest.mark.parametrize("kind", [Compression.XZ, Compression.ZSTD, Compression.GZIP])
def test_compressed_module_is_signed_inside_and_recompressed(unsigned: bytes, rsa_key: tuple[Path, Path],
                                                             tmp_path: Path, kind: Compression) -> None:
    key, cert = rsa_key
    path = tmp_path / f"af_key.ko{kind.suffix}"
    path.write_bytes(compress(unsigned, kind))
    plain = tmp_path / "plain.ko"
    plain.write_bytes(unsigned)
    signer = signer_for(key, cert)
    assert signer.sign_file(str(path)).status is SignStatus.SIGNED
    assert signer.sign_file(str(plain)).status is SignStatus.SIGNED
    raw = path.read_bytes()
    assert detect(raw[:6]) is kind
    with ModuleFile.open(path) as mf:
        assert bytes(mf.data) == plain.read_bytes()  # what sign-file would write for the decompressed module
    features = subprocess.run(["kmod", "--version"], capture_output=True, text=True).stdout
    if kind is Compression.GZIP and "-ZLIB" in features:
        return  # Debian's kmod is built without zlib: modinfo cannot read .ko.gz at all
    info = subprocess.run(["modinfo", "-F", "signer", str(path)], capture_output=True, text=True, check=True).stdout
    assert info.strip() == "kmodkit test RSA"


@pytest.mark.kernel
def test_real_xz_tree_module_resigned_in_place(xz_tree: KernelTree, rsa_key: tuple[Path, Path], tmp_path: Path) -> None:
    key, cert = rsa_key
    src = some_modules(xz_tree, 1)[0]
    path = tmp_path / src.name
    shutil.copy(src, path)
    signer = signer_for(key, cert, replace=True)
    result = signer.sign_file(str(path))
    assert result.status is SignStatus.REPLACED and result.compression is Compression.XZ
    with ModuleFile.open(path) as mf, ModuleFile.open(src) as orig:
        assert bytes(mf.content) == bytes(orig.content)
        assert mf.pkcs7 is not None and mf.pkcs7.issuer_cn == "kmodkit test RSA"


@pytest.mark.kernel
def test_signed_module_refused_without_replace_and_left_untouched(sample_module: Path, rsa_key: tuple[Path, Path],
                                                                  tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                                  ) -> None:
    key, cert = rsa_key
    path = tmp_path / "af_key.ko"
    shutil.copy(sample_module, path)
    before = path.read_bytes()
    assert main(["sign", "--key", str(key), "--cert", str(cert), str(path)]) == 1
    err = capsys.readouterr().err
    assert "already signed by another key or digest (signer 'Build time autogenerated kernel key')" in err
    assert "--replace" in err
    assert len(err.strip().splitlines()) == 1
    assert path.read_bytes() == before
    assert main(["sign", "--replace", "--key", str(key), "--cert", str(cert), str(path)]) == 0
    content, count = strip_signatures(path.read_bytes(), "x")
    assert count == 1 and bytes(content) == bytes(strip_signatures(before, "y")[0])


@pytest.mark.kernel
@pytest.mark.parametrize("key_name", ["rsa_key", "ec_key"])
def test_signing_again_with_the_same_key_is_a_no_op(unsigned: bytes, key_name: str, tmp_path: Path,
                                                    request: pytest.FixtureRequest,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """0.1: a pipeline's second `kmodkit sign` with the same key failed ("already signed", exit 1).
    Now the file is left byte for byte (ECDSA would sign differently each time), the run says so and exits 0;
    sign-file's signature counts as ours: the key, not the tool, decides."""
    key, cert = request.getfixturevalue(key_name)
    path, other = tmp_path / "m.ko", tmp_path / "n.ko"
    path.write_bytes(unsigned)
    if key_name == "rsa_key":
        subprocess.run([sign_file_tools()[0], "sha256", str(key), str(cert), str(path)], check=True)
    else:
        assert main(["sign", "--key", str(key), "--cert", str(cert), str(path)]) == 0
    other.write_bytes(unsigned)
    signed = path.read_bytes()
    capsys.readouterr()
    assert main(["sign", "--key", str(key), "--cert", str(cert), str(path), str(other)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"already signed by {key} ({_subject(cert)}, sha256) {path}"
    assert out[1:] == [f"signed {other}", "1 of 2 module(s) signed, 1 already signed by this key"]
    assert path.read_bytes() == signed
    assert main(["sign", "--json", "--key", str(key), "--cert", str(cert), str(path)]) == 0
    assert '"status": "already-signed"' in capsys.readouterr().out
    # another digest is another signature: refused as another key's is, unless --replace
    assert main(["sign", "--hash", "sha384", "--key", str(key), "--cert", str(cert), str(path)]) == 1
    assert "already signed by another key or digest" in capsys.readouterr().err
    assert main(["sign", "--replace", "--key", str(key), "--cert", str(cert), str(path)]) == 0
    assert capsys.readouterr().out == f"replaced {path}\n"


def _subject(cert: Path) -> str:
    from kmodkit.signing.trust import make_trusted_cert

    return make_trusted_cert(cert.read_bytes(), str(cert)).subject


@pytest.mark.kernel
def test_a_module_whose_content_changed_after_signing_is_not_taken_for_signed(unsigned: bytes,
                                                                              rsa_key: tuple[Path, Path],
                                                                              tmp_path: Path) -> None:
    """Same key, but the signature no longer holds (content patched after signing): refused, not skipped."""
    key, cert = rsa_key
    path = tmp_path / "m.ko"
    path.write_bytes(unsigned)
    signer = signer_for(key, cert)
    assert signer.sign_file(str(path)).status is SignStatus.SIGNED
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # made in the test: a module edited after it was signed
    path.write_bytes(bytes(data))
    result = signer.sign_file(str(path))
    assert result.status is SignStatus.FAILED and result.error is not None
    assert "already signed by another key or digest" in result.error.message


@pytest.mark.kernel
def test_key_not_matching_certificate_refused_before_any_file(unsigned: bytes, rsa_key: tuple[Path, Path],
                                                              ec_key: tuple[Path, Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "m.ko"
    path.write_bytes(unsigned)
    assert main(["sign", "--key", str(rsa_key[0]), "--cert", str(ec_key[1]), str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not match the certificate" in err and len(err.splitlines()) == 1
    assert path.read_bytes() == unsigned


@pytest.mark.kernel
def test_ecdsa_signature_accepted_by_openssl(unsigned: bytes, ec_key: tuple[Path, Path], tmp_path: Path) -> None:
    key, cert = ec_key
    path = tmp_path / "m.ko"
    path.write_bytes(unsigned)
    assert signer_for(key, cert).sign_file(str(path)).status is SignStatus.SIGNED
    with ModuleFile.open(path) as mf:
        blob = mf.signature_blob()
        assert mf.pkcs7 is not None and mf.pkcs7.signature_oid == "1.2.840.10045.4.3.2"
        assert blob is not None
        (tmp_path / "sig.p7").write_bytes(blob)
        (tmp_path / "content").write_bytes(bytes(mf.content))
    pem = tmp_path / "cert.pem"
    subprocess.run(["openssl", "x509", "-inform", "DER", "-in", str(cert), "-out", str(pem)], check=True)
    res = subprocess.run(["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(tmp_path / "sig.p7"),
                          "-content", str(tmp_path / "content"), "-certfile", str(pem), "-noverify",
                          "-out", os.devnull], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    # the kernel's ECDSA path takes the same message shape sign-file makes for EC keys
    theirs = tmp_path / "theirs.ko"
    theirs.write_bytes(unsigned)
    subprocess.run([sign_file_tools()[0], "sha256", str(key), str(cert), str(theirs)], check=True)
    with ModuleFile.open(theirs) as a, ModuleFile.open(path) as b:
        assert a.pkcs7 is not None and b.pkcs7 is not None
        assert (a.pkcs7.signature_oid, a.pkcs7.digest_oid, a.pkcs7.serial) == \
            (b.pkcs7.signature_oid, b.pkcs7.digest_oid, b.pkcs7.serial)


@pytest.mark.kernel
def test_batch_keeps_mode_and_reports_every_item(unsigned: bytes, rsa_key: tuple[Path, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    key, cert = rsa_key
    d = tmp_path / "tree"
    d.mkdir()
    for i in range(12):  # above the threshold for worker processes
        (d / f"m{i:02d}.ko").write_bytes(unsigned)
        (d / f"m{i:02d}.ko").chmod(0o640 if i % 2 else 0o644)
    (d / "broken.ko").write_bytes(b"not a module at all")
    (d / "broken.ko").chmod(0o600)
    assert main(["sign", "--key", str(key), "--cert", str(cert), str(d)]) == 1
    cap = capsys.readouterr()
    assert cap.out.count("signed ") == 12 and "12 of 13 module(s) signed, 1 failed" in cap.out
    assert cap.err.count("error: ") == 1 and "broken.ko" in cap.err and "not an ELF" in cap.err
    assert (d / "broken.ko").read_bytes() == b"not a module at all"
    digests = set()
    for i in range(12):
        p = d / f"m{i:02d}.ko"
        assert stat.S_IMODE(p.stat().st_mode) == (0o640 if i % 2 else 0o644)
        digests.add(hashlib.sha256(p.read_bytes()).hexdigest())
    assert len(digests) == 1  # same content, same key: PKCS#1 v1.5 is deterministic
    assert not [n for n in os.listdir(d) if n.endswith(".tmp")]


@pytest.mark.kernel
def test_kbuild_sign_pin_unlocks_an_encrypted_key_as_for_sign_file(unsigned: bytes, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    key, cert = tmp_path / "k.pem", tmp_path / "c.der"
    subprocess.run(["openssl", "req", "-new", "-utf8", "-sha256", "-days", "30", "-batch", "-x509", "-subj", "/CN=enc/",
                    "-newkey", "rsa:2048", "-passout", "pass:s3cret", "-keyout", str(key), "-outform", "DER",
                    "-out", str(cert)], check=True, capture_output=True)
    key.chmod(0o600)
    ours, theirs = tmp_path / "a.ko", tmp_path / "b.ko"
    ours.write_bytes(unsigned)
    theirs.write_bytes(unsigned)
    monkeypatch.setenv("KBUILD_SIGN_PIN", "s3cret")
    subprocess.run([sign_file_tools()[0], "sha256", str(key), str(cert), str(theirs)], check=True,
                   env={**os.environ, "KBUILD_SIGN_PIN": "s3cret"})
    assert main(["sign", "--key", str(key), "--cert", str(cert), str(ours)]) == 0
    assert ours.read_bytes() == theirs.read_bytes()
