"""kmodkit.toml as an attacker or an unlucky operator writes it: one reader (kbuild.manifest) for every
command, one ``error: FILE[:LINE]: ...`` line, exit 2, at once.  The bad files are made here (reality has no
such manifests to offer); build, health, lint and the exporter all answer them the same way."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kmodkit.errors import ConfigError, NotFoundError
from kmodkit.kbuild.manifest import MAX_BYTES, Manifest, load_expectations

GOOD = '[module]\nname = "demo"\nversion = "1.0"\n'

#: fake manifests: name -> (content, what the one error line says)
BAD: dict[str, tuple[bytes, str]] = {
    "invalid_utf8": (GOOD.encode() + b'description = "caf\xe9"\n', ":4: not UTF-8"),
    "deep_arrays": (GOOD.encode() + b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
    "deep_inline_tables": (GOOD.encode() + b"x = " + b"{a=" * 2000 + b"1" + b"}" * 2000 + b"\n", "nested too deeply"),
    "huge_integer": (GOOD.encode() + b"[parameters.n]\ntype = \"int\"\ndefault = " + b"9" * 5000 + b"\n",
                     ":6: holds a number too long"),
    "wide_integer": (GOOD.encode() + b"[parameters.n]\ntype = \"int\"\ndefault = " + b"9" * 30 + b"\n",
                     "does not fit in 64 bits"),
    "dotted_key_200k": (GOOD.encode() + b"a" + b".a" * 100_000 + b" = 1\n", "larger than a manifest may be"),
    "dotted_key_100k": (GOOD.encode() + b"a" + b".a" * 50_000 + b" = 1\n", ":4: a dotted key has more than"),
    "quoted_dotted_key": (GOOD.encode() + b'"a"' + b'."a"' * 1000 + b" = 1\n", "a dotted key has more than"),
    "dotted_header": (GOOD.encode() + b"[a" + b".a" * 1000 + b"]\n", "a dotted key has more than"),
    "too_large": (GOOD.encode() + b"# " + b"x" * MAX_BYTES + b"\n", "larger than a manifest may be"),
    "bad_toml": (b'[module]\nname = "demo\n', ":2: not valid TOML"),
    "bad_name": (b'[module]\nname = "cpu"\n', ":2: module.name: 'cpu' makes the module define cpu_init"),
}


def _cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kmodkit", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("case", sorted(BAD))
def test_hostile_manifest_is_one_config_error_at_once(tmp_path: Path, case: str) -> None:
    content, says = BAD[case]
    path = tmp_path / "kmodkit.toml"
    path.write_bytes(content)
    start = time.monotonic()
    with pytest.raises(ConfigError) as exc:
        Manifest.load(tmp_path)
    assert time.monotonic() - start < 2.0
    assert str(exc.value).startswith(str(path)) and says in str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("case", ["invalid_utf8", "deep_arrays", "huge_integer", "dotted_key_100k"])
@pytest.mark.parametrize("command", ["build", "health", "lint", "exporter"])
def test_every_command_reads_the_manifest_the_same_way(tmp_path: Path, case: str, command: str) -> None:
    content, says = BAD[case]
    (tmp_path / "kmodkit.toml").write_bytes(content)
    args = {"build": ["build", str(tmp_path)], "health": ["health", "--manifest", str(tmp_path)],
            "lint": ["lint", str(tmp_path)], "exporter": ["exporter", "--once", "--manifest", str(tmp_path)]}[command]
    proc = _cli(*args)
    if command == "exporter" and proc.returncode == 3:  # no /proc/modules here: it stops before the manifest
        pytest.skip("the exporter checks the kernel's module support first")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: {tmp_path / 'kmodkit.toml'}") and says in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_a_fifo_manifest_is_refused_at_once(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "kmodkit.toml")
    with pytest.raises(ConfigError, match="is a FIFO, not a regular file"):
        Manifest.load(tmp_path)
    for args in (["build", str(tmp_path)], ["health", "--manifest", str(tmp_path / "kmodkit.toml")]):
        proc = _cli(*args, timeout=20)  # the old reader blocked here until a writer came
        assert proc.returncode == 2 and "is a FIFO" in proc.stderr and proc.stderr.count("\n") == 1


def test_a_manifest_linked_to_dev_zero_is_refused(tmp_path: Path) -> None:
    (tmp_path / "kmodkit.toml").symlink_to("/dev/zero")
    with pytest.raises(ConfigError, match="is a device, not a regular file"):
        Manifest.load(tmp_path)
    with pytest.raises(ConfigError, match="is a device"):
        load_expectations(tmp_path / "kmodkit.toml")


def test_a_directory_named_as_the_manifest_is_refused(tmp_path: Path) -> None:
    (tmp_path / "kmodkit.toml").mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        Manifest.load(tmp_path / "kmodkit.toml" / "..")  # the project dir: its kmodkit.toml is a directory


def test_absent_manifest_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no such manifest"):
        Manifest.load(tmp_path)
    with pytest.raises(NotFoundError, match="no such manifest"):
        load_expectations(tmp_path / "x.toml")


def test_strings_and_comments_do_not_count_as_keys_or_nesting(tmp_path: Path) -> None:
    """The shape check looks past strings and comments: dots and brackets there are text."""
    text = (GOOD.replace('version = "1.0"', 'version = "' + "1." * 100 + '0"')
            + "# " + "[" * 100 + "a." * 100 + "\n"
            + 'description = """' + "{" * 100 + "\n" + "x." * 100 + '"""\n'
            + "[parameters.n]\ntype = 'int'\ndefault = 1\n")
    (tmp_path / "kmodkit.toml").write_text(text)
    m = Manifest.load(tmp_path)
    assert m.version == "1." * 100 + "0" and m.parameters[0].default == 1


def test_health_and_build_share_the_name_rule(tmp_path: Path) -> None:
    (tmp_path / "kmodkit.toml").write_text('[module]\nname = "module"\n')
    with pytest.raises(ConfigError, match="module_exit"):
        load_expectations(tmp_path)
    with pytest.raises(ConfigError, match="module_exit"):
        Manifest.load(tmp_path)


def test_health_only_manifest_and_entry_errors_point_at_the_line(tmp_path: Path) -> None:
    path = tmp_path / "h.toml"
    path.write_text('[health]\nallow_taint = "O"\n\n[[health.modules]]\nname = "af-key"\nversion = 3\n')
    with pytest.raises(ConfigError) as exc:
        load_expectations(path)
    assert str(exc.value).startswith(f"{path}:6: health.modules.version: must be a string, not int (entry 1)")
    path.write_text('[health]\nallow_taint = "O"\n\n[[health.modules]]\nname = "af-key"\n')
    [e] = load_expectations(path)
    assert (e.name, e.version, e.allow_taint) == ("af-key", None, "O")
