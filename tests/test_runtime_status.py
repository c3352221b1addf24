"""/proc/modules and /sys/module reading, taint decoding, health manifests and the exporter, on a fake
/proc and /sys that stand for a guest with two modules loaded (the booted-kernel checks are in
test_vm_guest.py)."""

from __future__ import annotations

import glob
import re
from pathlib import Path

import pytest

from kmodkit.errors import ConfigError, EnvironmentNotReady, NotFoundError, UserError
from kmodkit.runtime.exporter import Listen, registry, render
from kmodkit.runtime.health import check, read_manifest
from kmodkit.runtime.modules import KernelModules, ModuleState, parse_proc_modules
from kmodkit.runtime.taint import decode_letters, decode_mask, flags, mask_letters
from kmodkit.sysroot import Root
from conftest import need

PROC_MODULES = """hello 16384 0 - Live 0x0000000000000000 (OE)
af_key 45056 0 - Live 0x0000000000000000
xfrm_algo 16384 1 af_key, Live 0x0000000000000000
"""


@pytest.fixture
def fake_kernel(tmp_path: Path) -> KernelModules:
    """A /proc and /sys standing for a guest with hello (tainted OE), af_key and xfrm_algo loaded."""
    proc, sys = tmp_path / "proc", tmp_path / "sys"
    (proc / "sys/kernel").mkdir(parents=True)
    (proc / "modules").write_text(PROC_MODULES)
    (proc / "sys/kernel/tainted").write_text("12288\n")
    for name, attrs in {"hello": {"version": "1.2", "srcversion": "ABC", "initstate": "live"},
                        "af_key": {"initstate": "live"}, "xfrm_algo": {"initstate": "live"}}.items():
        d = sys / "module" / name
        (d / "parameters").mkdir(parents=True)
        for k, v in attrs.items():
            (d / k).write_text(v + "\n")
    (sys / "module/hello/parameters/n").write_text("5\n")
    (sys / "module/xfrm_algo/holders/af_key").mkdir(parents=True)
    (sys / "module/printk/parameters").mkdir(parents=True)  # a built-in one
    return KernelModules.of(Root(tmp_path))


def test_parse_proc_modules() -> None:
    mods = parse_proc_modules(PROC_MODULES + "broken line\n")
    assert [m.name for m in mods] == ["hello", "af_key", "xfrm_algo"]
    assert mods[0].taint == "OE" and mods[0].state is ModuleState.LIVE
    assert mods[2].holders == ("af_key",) and mods[2].refcount == 1


def test_status_reads_sysfs(fake_kernel: KernelModules) -> None:
    hello = fake_kernel.status(["hello"])[0]
    assert (hello.version, hello.srcversion, hello.initstate) == ("1.2", "ABC", "live")
    assert hello.parameters == (("n", "5"),)
    assert [f.name for f in hello.taint_flags] == ["OOT_MODULE", "UNSIGNED_MODULE"]
    assert fake_kernel.status(["printk"])[0].state is ModuleState.BUILTIN
    with pytest.raises(NotFoundError, match="not loaded"):
        fake_kernel.status(["nope"])
    assert [f.letter for f in fake_kernel.kernel_taint_flags()] == ["O", "E"]


def test_no_proc_modules_is_environment_not_ready(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentNotReady, match="kmodkit vm run"):
        KernelModules.of(Root(tmp_path)).proc_modules()


def test_taint_table_matches_the_kernel_headers() -> None:
    panics = sorted(glob.glob("/usr/src/linux-headers-*-common/include/linux/panic.h"))
    if not panics:
        need("kernel headers")
    defines = dict(re.findall(r"#define TAINT_(\w+)\s+(\d+)", Path(panics[-1]).read_text()))
    defines.pop("FLAGS_COUNT", None)
    assert {f.name: f.bit for f in flags()} == {k: int(v) for k, v in defines.items()}


def test_taint_decoding() -> None:
    assert [f.letter for f in decode_mask(1 | 1 << 12)] == ["P", "O"]
    assert mask_letters(1 << 12 | 1 << 13) == "G           OE"
    assert mask_letters(0) == ""
    assert [f.name for f in decode_letters("PO")] == ["PROPRIETARY_MODULE", "OOT_MODULE"]
    assert decode_mask(1 << 40)[0].name == "UNKNOWN_40"


def test_health_verdicts(fake_kernel: KernelModules, tmp_path: Path) -> None:
    m = tmp_path / "kmodkit.toml"
    m.write_text('[module]\nname = "hello"\nversion = "1.2"\n[[health.modules]]\nname = "af_key"\n'
                 '[[health.modules]]\nname = "gone"\n[[health.modules]]\nname = "hello"\nsrcversion = "XYZ"\n'
                 'allow_taint = "O"\n')
    verdicts = check(read_manifest(str(tmp_path)), fake_kernel)
    assert [(v.expectation.name, v.healthy) for v in verdicts] == [
        ("hello", True), ("af_key", True), ("gone", False), ("hello", False)]
    assert verdicts[3].problems == ("srcversion is ABC, expected XYZ",
                                    "unexpected taint E: a module was loaded whose signature and/or required key "
                                    "is missing: unsigned, or signed by a key the kernel does not trust")


def test_health_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        read_manifest(str(tmp_path / "none.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text('[module]\nname = 3\n')
    with pytest.raises(ConfigError, match="module.name: must be a string"):
        read_manifest(str(bad))
    bad.write_text('[health]\nallow_taint = "O"\n')
    with pytest.raises(ConfigError, match="expects no module"):
        read_manifest(str(bad))
    bad.write_text('[other]\n')  # an unknown table is an error of its own (issue 12)
    with pytest.raises(ConfigError, match="unknown key 'other'"):
        read_manifest(str(bad))


def test_exporter_render_and_listen(fake_kernel: KernelModules, tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    fams = {f.name: f for f in text_string_to_metric_families(render(registry(fake_kernel, [])).decode())}
    assert {s.labels["module"] for s in fams["kmodkit_module_loaded"].samples} == {"hello", "af_key", "xfrm_algo"}
    taints = {(s.labels["module"], s.labels["letter"]) for s in fams["kmodkit_module_taint"].samples}
    assert taints == {("hello", "O"), ("hello", "E")}
    assert fams["kmodkit_kernel_tainted"].samples[0].value == 12288
    assert Listen.parse("127.0.0.1:9417") == Listen("127.0.0.1", 9417)
    assert Listen.parse("[::1]:80") == Listen("::1", 80)
    with pytest.raises(UserError):
        Listen.parse("9417")


def test_taint_e_is_stated_as_the_kernel_states_it() -> None:
    """0.1 called E 'an unsigned module'; the kernel's E covers a key it does not trust as well (issue 11)."""
    from kmodkit.runtime.taint import by_letter

    e = by_letter("E")
    assert e is not None and e.name == "UNSIGNED_MODULE"
    assert "signature and/or required key is missing" in e.meaning and "does not trust" in e.meaning
