"""Loading for real: a Debian generic kernel booted under QEMU runs kmodkit's load, unload, status,
health and exporter against modules built here and modules of the kernel's own tree.

Two boots in all (TCG here, about half a minute each): one with the kernel's defaults through
`kmodkit vm run --json --append ...` over virtiofs, one with module.sig_enforce=1 through the library
over 9p.  Inside, one script runs every check through kmodkit's CLI entry point and reports JSON on its
output; the tests below assert on that report, so each check fails on its own.  At the end of each
boot, root in the guest tries to write the host through the share.
In the first boot the guest mounts a tmpfs over its own /etc/modprobe.d (the host's is untouched)
and writes MODPROBE_CONF there, so plans meet real options, softdep and install lines.  The module
signed for the second boot is signed by kmodkit with a key kmodkit made.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import KernelTree, discover_trees, need

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.kernel]

MODULES_C = {
    "hello.c": r"""
        #include <linux/module.h>
        static int n = 1;
        module_param(n, int, 0644);
        MODULE_PARM_DESC(n, "a number");
        static char *greeting = "hello";
        module_param(greeting, charp, 0444);
        MODULE_PARM_DESC(greeting, "what to say");
        static int repeat = 1;
        module_param(repeat, int, 0444);
        MODULE_PARM_DESC(repeat, "how many times");
        static int __init hello_init(void) { pr_info("hello: %s %d\n", greeting, n); return 0; }
        static void __exit hello_exit(void) { }
        module_init(hello_init);
        module_exit(hello_exit);
        MODULE_LICENSE("GPL");
        MODULE_VERSION("1.2");
    """,
    "chain_a.c": r"""
        #include <linux/module.h>
        int chain_a_value = 7;
        EXPORT_SYMBOL_GPL(chain_a_value);
        static int __init a_init(void) { return 0; }
        static void __exit a_exit(void) { }
        module_init(a_init);
        module_exit(a_exit);
        MODULE_LICENSE("GPL");
    """,
    "chain_b.c": r"""
        #include <linux/module.h>
        extern int chain_a_value;
        static int __init b_init(void) { return chain_a_value == 7 ? -ENODEV : 0; }
        static void __exit b_exit(void) { }
        module_init(b_init);
        module_exit(b_exit);
        MODULE_LICENSE("GPL");
    """,
}

#: the guest's /etc/modprobe.d: an options line for a module file's name, a softdep whose pre module is an
#: install command that fails (ignored, as modprobe ignores softdep failures) and whose post module is an
#: install command that reports its environment
MODPROBE_CONF = """\
options hello greeting=conf
softdep hello pre: kk_fail post: kk_probe
install kk_fail /bin/false
install kk_probe echo probed $MODPROBE_MODULE $CMDLINE_OPTS
options kk_probe x=1
"""

GUEST_SCRIPT = r'''
import io, json, os, subprocess, sys, time, urllib.request
from contextlib import redirect_stderr, redirect_stdout
from kmodkit.cli.main import main

D = sys.argv[1]
report = {}

def kk(*argv):
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    err = io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(list(argv))
    out.flush()
    text = out.buffer.getvalue().decode()
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    return {"rc": rc, "out": text, "err": err.getvalue(), "json": doc}

def proc_modules():
    with open("/proc/modules") as f:
        return {line.split()[0]: line.split() for line in f}

def read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None

#: root in the guest, in a mount namespace of its own: drop the overlay over /tmp (the host's /tmp is
#: then the share's), remount the share read-write, overwrite a host file and create one beside it
ATTACK = (
    'umount -l /tmp || echo umount-failed; '
    'mount -o remount,rw / && echo remounted; '
    'echo guest-wrote > "$1" && echo wrote; '
    'echo new > "$1.new" && echo created'
)

def attack_host(victim):
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", ATTACK, "sh", victim],
                          capture_output=True, text=True)
    return {"rc": done.returncode, "out": done.stdout.split(), "err": done.stderr}

if sys.argv[2] == "default":
    subprocess.run(["mount", "-t", "tmpfs", "kmodkit-test", "/etc/modprobe.d"], check=True)
    with open("/etc/modprobe.d/kmodkit-test.conf", "w") as f, open(f"{D}/modprobe.conf") as conf:
        f.write(conf.read())
    report["load_hello"] = kk("load", f"{D}/hello.ko", "n=5", "--json")
    report["param_n"] = read("/sys/module/hello/parameters/n")
    report["param_greeting"] = read("/sys/module/hello/parameters/greeting")
    report["param_repeat"] = read("/sys/module/hello/parameters/repeat")
    report["install_fails"] = kk("load", "kk_fail", "--json")
    report["load_hello_again"] = kk("load", f"{D}/hello.ko", "--json")
    report["bad_param"] = kk("load", f"{D}/hello.ko", "nn=1")
    report["status_hello"] = kk("status", "hello", "--json")
    report["status_all"] = kk("status", "--json")
    report["health"] = kk("health", "--manifest", f"{D}/kmodkit.toml", "--json")
    report["health_wrong"] = kk("health", "--manifest", f"{D}/wrong.toml", "--json")
    report["exporter_once"] = kk("exporter", "--once", "--manifest", f"{D}/kmodkit.toml")
    srv = subprocess.Popen([sys.executable, "-m", "kmodkit", "exporter", "--listen", "127.0.0.1:9417"],
                           stderr=subprocess.PIPE)
    srv.stderr.readline()  # "serving metrics on ..."
    report["scrape"] = urllib.request.urlopen("http://127.0.0.1:9417/metrics", timeout=30).read().decode()
    srv.terminate(); srv.wait()
    report["proc_modules"] = proc_modules()
    report["kernel_tainted"] = read("/proc/sys/kernel/tainted")
    report["unload_hello"] = kk("unload", "hello", "--json")
    report["hello_gone"] = not os.path.exists("/sys/module/hello")
    report["load_af_key"] = kk("load", "af_key", "--json")
    report["after_af_key"] = sorted(m for m in proc_modules() if m in ("af_key", "xfrm_algo"))
    report["unload_held"] = kk("unload", "xfrm_algo")
    report["unload_with_deps"] = kk("unload", "--with-deps", "af_key", "--json")
    report["after_unload"] = sorted(m for m in proc_modules() if m in ("af_key", "xfrm_algo"))
    report["chain"] = kk("load", f"{D}/chain_b.ko", "--json")
    report["after_chain"] = sorted(m for m in proc_modules() if m.startswith("chain_"))
    report["vermagic"] = kk("load", f"{D}/other/hello.ko", "--json")
    report["vermagic_no_check"] = kk("load", f"{D}/other/hello.ko", "--no-check", "--json")
    report["after_vermagic"] = "hello" in proc_modules()
    t = time.monotonic()
    kk("status", "--json")
    report["status_in_process_ms"] = (time.monotonic() - t) * 1000
else:
    report["sig_enforce"] = read("/sys/module/module/parameters/sig_enforce")
    report["unsigned"] = kk("load", f"{D}/hello.ko", "--json")
    report["untrusted"] = kk("load", f"{D}/signed/hello.ko", "--json")
    report["debian_signed"] = kk("load", "af_key", "--json")
    report["after"] = sorted(m for m in proc_modules() if m in ("af_key", "xfrm_algo", "hello"))
report["cmdline"] = read("/proc/cmdline")
with open("/proc/1/environ", "rb") as f:  # the kernel hands unknown name=value parameters to init
    report["init_env"] = f.read().decode(errors="replace").split("\0")
report["attack"] = attack_host(f"{D}/victim-{sys.argv[2]}")
print("KMODKIT-REPORT " + json.dumps(report))
'''


def _newest_generic() -> KernelTree:
    for tree in discover_trees():
        if tree.flavour == "amd64" and tree.headers is not None and tree.vmlinuz is not None:
            return tree
    need("a Debian generic amd64 kernel with its headers")
    raise AssertionError("unreachable")


def _build(src: Path, headers: Path) -> None:
    done = subprocess.run(["make", "-s", "-C", str(headers), f"M={src}", "modules"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _kmodkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kmodkit", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> tuple[KernelTree, Path]:
    """Test modules built for the newest generic kernel (plus hello for another kernel, and signed by
    kmodkit with a key kmodkit made, which no kernel trusts), a manifest, the guest's modprobe.d lines and
    the guest script; under the host's /tmp, which the guest sees."""
    if shutil.which("qemu-system-x86_64") is None:
        need("qemu-system-x86")
    tree = _newest_generic()
    d = tmp_path_factory.mktemp("vmguest")
    for name, code in MODULES_C.items():
        (d / name).write_text(textwrap.dedent(code))
    (d / "Kbuild").write_text("obj-m := hello.o chain_a.o chain_b.o\n")
    _build(d, tree.headers)  # type: ignore[arg-type]
    other = next((t for t in discover_trees() if t.release != tree.release and t.headers is not None), None)
    if other is None:
        need("a second kernel's headers (to build a module for the wrong kernel)")
    (d / "other").mkdir()
    (d / "other/hello.c").write_text(textwrap.dedent(MODULES_C["hello.c"]))
    (d / "other/Kbuild").write_text("obj-m := hello.o\n")
    _build(d / "other", other.headers)  # type: ignore[union-attr, arg-type]
    # a key of our own, made and used by kmodkit: the kernel does not trust it
    made = _kmodkit("keys", "new", "--out", str(d / "keys"), "--cn", "kmodkit test untrusted", "--bits", "2048")
    assert made.returncode == 0, made.stderr
    (d / "signed").mkdir()
    shutil.copy(d / "hello.ko", d / "signed/hello.ko")
    signed = _kmodkit("sign", "--key", str(d / "keys/signing_key.pem"), "--cert", str(d / "keys/signing_cert.der"),
                      str(d / "signed/hello.ko"))
    assert signed.returncode == 0, signed.stderr
    (d / "kmodkit.toml").write_text('[module]\nname = "hello"\nversion = "1.2"\n'
                                    '[parameters.repeat]\ntype = "int"\ndefault = 2\n[health]\nallow_taint = "OE"\n')
    (d / "modprobe.conf").write_text(MODPROBE_CONF)
    (d / "wrong.toml").write_text('[module]\nname = "hello"\nversion = "9.9"\n[health]\nallow_taint = ""\n'
                                  '[[health.modules]]\nname = "not_there"\n')
    (d / "guest.py").write_text(GUEST_SCRIPT)
    for mode in ("default", "enforce"):
        (d / f"victim-{mode}").write_text("host original\n")
    return tree, d


def _report(out: str, run_dir: str) -> dict[str, object]:
    line = next(l for l in out.splitlines() if l.startswith("KMODKIT-REPORT "))
    report: dict[str, object] = json.loads(line.split(" ", 1)[1])
    with open(Path(run_dir) / "kernel.log", encoding="utf-8", errors="replace") as f:
        report["_kernel_log"] = f.read()
    return report


def _boot(tree: KernelTree, d: Path, mode: str, append: tuple[str, ...], share: str) -> dict[str, object]:
    from kmodkit.vm.initramfs import Share
    from kmodkit.vm.machine import Vm, VmSpec

    spec = VmSpec(tree.release, (sys.executable, str(d / "guest.py"), str(d), mode), append=append,
                  share=Share(share), runs_dir=str(d / "runs"), timeout=600, cwd="/")
    result = Vm(spec).run()
    out = result.output()
    assert result.exit_status == 0, f"guest failed; logs in {result.run_dir}:\n{out[-3000:]}"
    report = _report(out, result.run_dir)
    report["_result"] = result.to_json()
    return report


def _boot_cli(tree: KernelTree, d: Path, mode: str, append: tuple[str, ...]) -> dict[str, object]:
    share = "virtiofs" if os.geteuid() == 0 else "9p"  # virtiofsd runs only as root
    done = subprocess.run([sys.executable, "-m", "kmodkit", "vm", "run", "-k", tree.release, "--share", share,
                           "--runs-dir", str(d / "runs"), "--timeout", "600", "--json",
                           *(f"--append={a}" for a in append),
                           "--", sys.executable, str(d / "guest.py"), str(d), mode],
                          capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, f"guest failed:\n{done.stderr[-3000:]}"
    result = json.loads(done.stdout)  # --json: the result alone on stdout, the command's output on stderr
    report = _report(done.stderr, result["run_dir"])
    report["_result"] = result
    return report


@pytest.fixture(scope="module")
def default_boot(workdir: tuple[KernelTree, Path]) -> dict[str, object]:
    return _boot_cli(*workdir, "default", ('kk_quoted="a b"', "kk_plain=1 kk_word"))


@pytest.fixture(scope="module")
def enforcing_boot(workdir: tuple[KernelTree, Path]) -> dict[str, object]:
    return _boot(*workdir, "enforce", ("module.sig_enforce=1",), "9p")


def _j(report: dict[str, object], key: str) -> dict[str, object]:
    value = report[key]
    assert isinstance(value, dict)
    return value


def test_run_keeps_the_whole_kernel_log(default_boot: dict[str, object]) -> None:
    log = str(default_boot["_kernel_log"])
    assert "Linux version" in log.splitlines()[0]
    assert "hello: conf 5" in log  # the module's own line, logged while the command ran


def test_load_with_parameters_and_read_them_back(default_boot: dict[str, object]) -> None:
    load = _j(default_boot, "load_hello")
    assert load["rc"] == 0, load["err"]
    doc = load["json"]
    assert isinstance(doc, dict)
    assert doc["loaded"] == ["hello"]
    # kmodkit.toml's default, then modprobe.d's options line, then the command line
    [step] = [s for s in doc["plan"]["steps"] if s["name"] == "hello"]
    assert step["params"] == ["repeat=2", "greeting=conf", "n=5"]
    assert doc["plan"]["manifest"].endswith("/kmodkit.toml")
    assert default_boot["param_n"] == "5"
    assert default_boot["param_greeting"] == "conf"
    assert default_boot["param_repeat"] == "2"
    again = _j(default_boot, "load_hello_again")
    assert again["rc"] == 0 and again["json"]["skipped"] == ["hello"]  # type: ignore[index]
    assert again["json"]["installed"] == []  # type: ignore[index]  # a loaded target plans nothing else


def test_softdeps_run_install_commands_and_a_failing_softdep_is_ignored(default_boot: dict[str, object]) -> None:
    doc = _j(default_boot, "load_hello")["json"]
    assert isinstance(doc, dict)
    assert [(s["name"], s["kind"], s["reason"], s["required"]) for s in doc["plan"]["steps"]] == [
        ("kk_fail", "install", "softdep-pre", False), ("hello", "insmod", "target", True),
        ("kk_probe", "install", "softdep-post", False)]
    runs = {r["module"]: r for r in doc["installed"]}
    assert runs["kk_fail"]["status"] == 1
    # /bin/sh -c with CMDLINE_OPTS and MODPROBE_MODULE in the environment (the shell expands $CMDLINE_OPTS)
    assert runs["kk_probe"] == {"module": "kk_probe", "command": "echo probed $MODPROBE_MODULE x=1", "status": 0,
                                "output": "probed kk_probe x=1\n"}
    [failed] = doc["softdep_failures"]
    assert failed["module"] == "kk_fail" and failed["reason"] == "install-command"


def test_a_failing_install_command_of_the_module_asked_for_fails_the_load(default_boot: dict[str, object]) -> None:
    fail = _j(default_boot, "install_fails")
    assert fail["rc"] == 1
    why = fail["json"]["explanation"]  # type: ignore[index]
    assert why["reason"] == "install-command" and why["errno"] == "EINVAL"
    assert "'/bin/false' exited with status 1" in why["problem"]


def test_undeclared_parameter_is_refused_before_loading_with_a_suggestion(default_boot: dict[str, object]) -> None:
    bad = _j(default_boot, "bad_param")
    assert bad["rc"] == 2
    assert "did you mean n?" in str(bad["err"]) and "greeting" in str(bad["err"])


def test_unload_removes_the_module(default_boot: dict[str, object]) -> None:
    assert _j(default_boot, "unload_hello")["rc"] == 0
    assert default_boot["hello_gone"] is True


def test_status_agrees_with_proc_modules(default_boot: dict[str, object]) -> None:
    proc = default_boot["proc_modules"]
    assert isinstance(proc, dict)
    st = _j(default_boot, "status_all")["json"]
    assert isinstance(st, dict)
    by_name = {m["name"]: m for m in st["modules"]}
    assert set(by_name) == set(proc)
    for name, cols in proc.items():
        assert by_name[name]["size"] == int(cols[1])
        assert by_name[name]["refcount"] == int(cols[2])
        assert by_name[name]["state"] == cols[4]
    hello = _j(default_boot, "status_hello")["json"]["modules"][0]  # type: ignore[index]
    assert hello["version"] == "1.2" and hello["initstate"] == "live"
    assert hello["parameters"]["n"] == "5"
    assert set(hello["taint"]) == set(proc["hello"][6].strip("()"))
    assert {f["letter"] for f in hello["taint_flags"]} == {"O", "E"}  # out of tree, unsigned
    assert st["kernel_taint"]["mask"] == int(str(default_boot["kernel_tainted"]))


def test_health_passes_and_fails_with_reasons(default_boot: dict[str, object]) -> None:
    ok = _j(default_boot, "health")
    assert ok["rc"] == 0 and ok["json"]["healthy"] is True  # type: ignore[index]
    bad = _j(default_boot, "health_wrong")
    assert bad["rc"] == 1
    problems = {m["module"]: m["problems"] for m in bad["json"]["modules"]}  # type: ignore[index]
    assert "version is 1.2, expected 9.9" in problems["hello"]
    assert any(p.startswith("unexpected taint O") for p in problems["hello"])
    assert problems["not_there"] == ["not loaded"]


def test_exporter_scrape_agrees_with_proc_modules(default_boot: dict[str, object]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    proc = default_boot["proc_modules"]
    assert isinstance(proc, dict)
    for key in ("scrape", "exporter_once"):
        text = default_boot[key] if key == "scrape" else _j(default_boot, key)["out"]
        fams = {f.name: f for f in text_string_to_metric_families(str(text))}
        loaded = {s.labels["module"] for s in fams["kmodkit_module_loaded"].samples}
        assert loaded == set(proc)
        sizes = {s.labels["module"]: s.value for s in fams["kmodkit_module_size_bytes"].samples}
        assert all(sizes[n] == int(c[1]) for n, c in proc.items())
        hello = [s for s in fams["kmodkit_module_refcount"].samples if s.labels["module"] == "hello"]
        assert hello[0].labels["version"] == "1.2"
        assert fams["kmodkit_kernel_tainted"].samples[0].value == int(str(default_boot["kernel_tainted"]))
    once = {f.name: f for f in text_string_to_metric_families(str(_j(default_boot, "exporter_once")["out"]))}
    assert [s.value for s in once["kmodkit_health_ok"].samples] == [1.0]


def test_load_af_key_loads_xfrm_algo_first_and_with_deps_removes_both(default_boot: dict[str, object]) -> None:
    load = _j(default_boot, "load_af_key")
    assert load["rc"] == 0, load["err"]
    assert load["json"]["loaded"] == ["xfrm_algo", "af_key"]  # type: ignore[index]
    assert default_boot["after_af_key"] == ["af_key", "xfrm_algo"]
    held = _j(default_boot, "unload_held")
    assert held["rc"] == 2 and "held by af_key" in str(held["err"])
    assert _j(default_boot, "unload_with_deps")["json"]["unloaded"] == ["af_key", "xfrm_algo"]  # type: ignore[index]
    assert default_boot["after_unload"] == []


def test_chain_whose_last_module_fails_leaves_nothing_behind(default_boot: dict[str, object]) -> None:
    chain = _j(default_boot, "chain")
    assert chain["rc"] == 1
    doc = chain["json"]
    assert isinstance(doc, dict)
    assert doc["explanation"]["module"] == "chain_b"
    assert doc["explanation"]["reason"] == "init-failed" and doc["explanation"]["errno"] == "ENODEV"
    assert doc["rolled_back"] == ["chain_a"]
    assert default_boot["after_chain"] == []


def test_module_for_another_kernel_is_explained_with_the_kernels_line(default_boot: dict[str, object]) -> None:
    doc = _j(default_boot, "vermagic")["json"]
    assert isinstance(doc, dict)
    why = doc["explanation"]
    assert why["reason"] == "invalid-format" and why["errno"] == "ENOEXEC"
    assert "version magic" in why["problem"] or "module_layout" in why["problem"]
    assert why["kernel_lines"]
    assert default_boot["after_vermagic"] is False


def test_load_checks_first_and_the_kernel_agrees_with_the_prediction(default_boot: dict[str, object]) -> None:
    """A refusal is predicted before the kernel is asked (issue 11); --no-check asks it: same errno, same lines."""
    predicted = _j(default_boot, "vermagic")["json"]["explanation"]  # type: ignore[index]
    asked = _j(default_boot, "vermagic_no_check")["json"]["explanation"]  # type: ignore[index]
    assert predicted["predicted"] is True and asked["predicted"] is False
    assert predicted["errno"] == asked["errno"] == "ENOEXEC"
    assert predicted["kernel_lines"] == asked["kernel_lines"] and asked["kernel_lines"]
    assert predicted["problem"].startswith("predicted, not loaded: ")


def test_run_record_keeps_the_kernels_refusals(default_boot: dict[str, object]) -> None:
    """0.1's record said nothing of refused loads; the kernel's own line of the --no-check load is there."""
    refused = _j(default_boot, "_result")["refused_loads"]
    assert "hello: disagrees about version of symbol module_layout" in refused  # type: ignore[operator]


def test_load_passes_on_the_kernels_verification_failed_notice(default_boot: dict[str, object]) -> None:
    lines = _j(default_boot, "load_hello")["json"]["kernel_lines"]  # type: ignore[index]
    assert "hello: module verification failed: signature and/or required key missing - tainting kernel" in lines


def test_kmodkit_signature_verifies_on_the_host_but_the_kernel_would_not_trust_it(
        workdir: tuple[KernelTree, Path]) -> None:
    tree, d = workdir
    ours = _kmodkit("verify", "--cert", str(d / "keys/signing_cert.der"), str(d / "signed/hello.ko"))
    assert ours.returncode == 0, ours.stdout + ours.stderr
    kernel = _kmodkit("verify", "-k", tree.release, str(d / "signed/hello.ko"))
    assert kernel.returncode == 1, kernel.stdout + kernel.stderr


def test_sig_enforce_refuses_unsigned_and_untrusted_and_loads_debian_signed(enforcing_boot: dict[str, object]) -> None:
    assert enforcing_boot["sig_enforce"] == "Y"
    unsigned = _j(enforcing_boot, "unsigned")["json"]["explanation"]  # type: ignore[index]
    assert unsigned["reason"] == "signature-refused" and unsigned["errno"] == "EKEYREJECTED"
    assert "unsigned module" in unsigned["problem"] and "sig_enforce=1" in unsigned["problem"]
    # signed by kmodkit: well formed (a malformed one fails with EBADMSG), refused only because the kernel lacks
    # the key: kernel/module/signing.c turns ENOKEY into "module with unavailable key" and EKEYREJECTED
    untrusted = _j(enforcing_boot, "untrusted")["json"]["explanation"]  # type: ignore[index]
    assert untrusted["reason"] == "signature-refused" and untrusted["errno"] == "EKEYREJECTED"
    assert "unavailable key" in untrusted["problem"]
    assert "mokutil --import" in untrusted["fix"]  # a signed module: enrol its key, not "kmodkit sign"
    debian = _j(enforcing_boot, "debian_signed")
    assert debian["rc"] == 0, debian["err"]
    assert enforcing_boot["after"] == ["af_key", "xfrm_algo"]


def test_json_result_is_alone_on_stdout(default_boot: dict[str, object]) -> None:
    result = default_boot["_result"]
    assert isinstance(result, dict)
    assert result["exit_status"] == 0 and Path(str(result["run_dir"])).is_dir()


def test_append_reaches_the_kernel_as_the_kernel_parses_it(default_boot: dict[str, object]) -> None:
    # the text goes to the kernel as it was given, quotes and all: the kernel's own parser (next_arg) keeps
    # "a b" one value and hands the unknown parameters to init, the oracle here
    assert str(default_boot["cmdline"]).endswith(' kk_quoted="a b" kk_plain=1 kk_word')
    env = default_boot["init_env"]
    assert isinstance(env, list)
    assert "kk_quoted=a b" in env and "kk_plain=1" in env


@pytest.mark.parametrize("boot", ["default_boot", "enforcing_boot"])
def test_root_in_the_guest_cannot_write_the_host_through_the_share(
        boot: str, request: pytest.FixtureRequest, workdir: tuple[KernelTree, Path]) -> None:
    report = request.getfixturevalue(boot)
    attack = report["attack"]
    share = report["_result"]["share"]
    assert isinstance(attack, dict)
    # the guest got as far as a guest can: its own mount is read-write now
    assert "remounted" in attack["out"], attack
    # and the host refused the writes (EROFS from virtiofsd's read-only view or qemu's readonly 9p server)
    assert "wrote" not in attack["out"] and "created" not in attack["out"], (share, attack)
    assert "Read-only file system" in attack["err"], attack
    mode = "default" if boot == "default_boot" else "enforce"
    d = workdir[1]
    assert (d / f"victim-{mode}").read_text() == "host original\n"
    assert not (d / f"victim-{mode}.new").exists()
