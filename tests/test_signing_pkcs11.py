"""Signing with a key in a PKCS#11 token: a SoftHSM2 token made by the test, compared with file-key signing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import need
from kmodkit.cli.main import main
from kmodkit.modfile import ModuleFile

SOFTHSM_LIBS = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")


@pytest.fixture
def token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path, Path]:
    """A SoftHSM2 token 'kmodkit' (user PIN 1234) holding an RSA key 'modsign'; returns (library, key, cert)."""
    lib = next((p for p in SOFTHSM_LIBS if Path(p).exists()), None)
    if lib is None or shutil.which("softhsm2-util") is None:
        need("softhsm2")
    assert lib is not None
    (tmp_path / "tokens").mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp_path / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    keys = tmp_path / "keys"
    assert main(["keys", "new", "--out", str(keys), "--bits", "2048", "--cn", "token key"]) == 0
    pk8 = tmp_path / "key.pk8"
    subprocess.run(["openssl", "pkcs8", "-topk8", "-nocrypt", "-in", str(keys / "signing_key.pem"), "-out", str(pk8)],
                   check=True)
    run = {"check": True, "capture_output": True, "env": {"SOFTHSM2_CONF": str(conf), "PATH": "/usr/bin:/bin"}}
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "kmodkit", "--so-pin", "5678",
                    "--pin", "1234"], **run)  # type: ignore[call-overload]
    subprocess.run(["softhsm2-util", "--import", str(pk8), "--token", "kmodkit", "--label", "modsign", "--id", "a1",
                    "--pin", "1234"], **run)  # type: ignore[call-overload]
    pk8.unlink()
    return lib, keys / "signing_key.pem", keys / "signing_cert.der"


@pytest.mark.kernel
def test_token_signature_equals_file_key_signature(token: tuple[str, Path, Path], sample_module: Path,
                                                    tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    lib, key, cert = token
    with ModuleFile.open(sample_module) as mf:
        content = bytes(mf.content)
    by_file, by_token, by_id = tmp_path / "f.ko", tmp_path / "t.ko", tmp_path / "i.ko"
    for p in (by_file, by_token, by_id):
        p.write_bytes(content)
    assert main(["sign", "--key", str(key), "--cert", str(cert), str(by_file)]) == 0
    uri = f"pkcs11:token=kmodkit;object=modsign;type=private?module-path={lib}&pin-value=1234"
    assert main(["sign", "--key", uri, "--cert", str(cert), str(by_token)]) == 0
    assert by_token.read_bytes() == by_file.read_bytes()
    # the PIN from KBUILD_SIGN_PIN, as sign-file reads it; the key by id
    monkeypatch.setenv("KBUILD_SIGN_PIN", "1234")
    assert main(["sign", "--keyid", "--key", f"pkcs11:token=kmodkit;id=%a1?module-path={lib}", "--cert", str(cert),
                 str(by_id)]) == 0
    assert main(["verify", "--cert", str(cert), str(by_id)]) == 0
    assert "1234" not in capsys.readouterr().out


@pytest.mark.kernel
def test_wrong_pin_and_missing_key_are_one_line(token: tuple[str, Path, Path], sample_module: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    lib, _, cert = token
    mod = tmp_path / "m.ko"
    shutil.copy(sample_module, mod)
    before = mod.read_bytes()
    capsys.readouterr()
    for uri, expect in ((f"pkcs11:token=kmodkit;object=modsign?module-path={lib}&pin-value=9999", "wrong PIN"),
                        (f"pkcs11:token=kmodkit;object=nokey?module-path={lib}&pin-value=1234", "no private key"),
                        (f"pkcs11:token=absent?module-path={lib}&pin-value=1234", "no such token")):
        assert main(["sign", "--replace", "--key", uri, "--cert", str(cert), str(mod)]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and expect in err, err
        assert "9999" not in err
    assert mod.read_bytes() == before
