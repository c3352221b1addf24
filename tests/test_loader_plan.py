"""Load plans against modprobe's own (--show-depends), parameters and their sources, explanations, and the host guard."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import KernelTree
from kmodkit.errors import ConfigError, EnvironmentNotReady, NotFoundError, UserError
from kmodkit.index.config import ModprobeConfig
from kmodkit.index.resolver import StepKind, StepReason
from kmodkit.kbuild.manifest import Manifest
from kmodkit.loader.explain import KMSG_RULES, LOAD_ERRNO, Reason, explain, explain_install
from kmodkit.loader.kmsg import KmsgRecord, parse_record
from kmodkit.loader.loader import Loader
from kmodkit.loader.params import check_params, join_params, split_words
from kmodkit.loader.plan import Planner

pytestmark = pytest.mark.kernel

#: modprobe.d lines for the configured comparisons: options (for a module and for an install name), a softdep
#: with pre and post modules, an install command, and an alias of a blacklisted module
CONF = """\
options dummy numdummies=3
options af_key unused=1
softdep af_key pre: dummy post: xfrm_user
install kk_probe /bin/echo probing $MODPROBE_MODULE $CMDLINE_OPTS
options kk_probe x=1
alias kk_alias dummy
blacklist dummy
"""


def _modprobe(tree: KernelTree, name: str, *extra: str) -> list[str]:
    done = subprocess.run(["modprobe", *extra, "--show-depends", "-S", tree.release, name], capture_output=True,
                          text=True, check=True)
    return done.stdout.splitlines()


def _empty_config(tree: KernelTree, tmp_path: Path, text: str = "") -> ModprobeConfig:
    conf = tmp_path / "modprobe.d"
    conf.mkdir(exist_ok=True)
    (conf / "test.conf").write_text(text)
    return ModprobeConfig.load(str(tree.moddir), [str(conf)], cmdline="")


# ceph reaches crc32c through libcrc32c's softdep; dummy gets 'numdummies=0' from the system's modprobe.d
@pytest.mark.parametrize("name", ["af_key", "9p", "nfsv4", "virtiofs", "virtio_pci", "xfrm_user", "ceph", "dummy",
                                  "crc32c"])
def test_plan_matches_modprobe_show_depends(generic_tree: KernelTree, name: str) -> None:
    plan = Planner(str(generic_tree.moddir)).plan(name)
    assert plan.show_depends() == _modprobe(generic_tree, name)


def test_ceph_plans_its_softdep_as_optional(generic_tree: KernelTree) -> None:
    plan = Planner(str(generic_tree.moddir)).plan("ceph")
    soft = [s for s in plan.steps if s.reason is StepReason.SOFTDEP_PRE]
    assert {s.name for s in soft} >= {"crc32c_generic"}
    assert not any(s.required for s in soft)
    assert all(s.required for s in plan.steps if s.reason in (StepReason.TARGET, StepReason.DEPENDENCY))


@pytest.mark.parametrize("name", ["dummy", "af_key", "kk_probe", "kk_alias"])
def test_plan_with_modprobe_d_lines_matches_modprobe(generic_tree: KernelTree, tmp_path: Path, name: str) -> None:
    conf = tmp_path / "modprobe.d"
    conf.mkdir()
    (conf / "kmodkit-test.conf").write_text(CONF)
    planner = Planner(str(generic_tree.moddir), ModprobeConfig.load(str(generic_tree.moddir), [str(conf)]))
    if name == "kk_alias":
        with pytest.raises(UserError, match=r"blacklisted \(dummy\).*by its own name"):
            planner.plan(name)
        assert _modprobe(generic_tree, name, "-C", str(conf)) == []
        return
    plan = planner.plan(name)
    assert plan.show_depends() == _modprobe(generic_tree, name, "-C", str(conf))


def test_options_softdeps_and_install_lines_shape_the_steps(generic_tree: KernelTree, tmp_path: Path) -> None:
    conf = tmp_path / "modprobe.d"
    conf.mkdir()
    (conf / "kmodkit-test.conf").write_text(CONF)
    planner = Planner(str(generic_tree.moddir), ModprobeConfig.load(str(generic_tree.moddir), [str(conf)], ""))
    [dummy] = planner.plan("dummy").steps
    assert dummy.params == ("numdummies=3",) and dummy.kind is StepKind.INSMOD
    steps = planner.plan("af_key").steps
    assert [(s.name, s.reason, s.required) for s in steps] == [
        ("xfrm_algo", StepReason.DEPENDENCY, True), ("dummy", StepReason.SOFTDEP_PRE, False),
        ("af_key", StepReason.TARGET, True),
        # listed again as libkmod lists it (the loader skips it), and required as af_key's own dependency
        ("xfrm_algo", StepReason.DEPENDENCY, True), ("xfrm_user", StepReason.SOFTDEP_POST, False)]
    [probe] = planner.plan("kk_probe", ["y=2"]).steps
    assert probe.kind is StepKind.INSTALL and probe.params == ("x=1", "y=2")
    assert probe.command_line() == "/bin/echo probing $MODPROBE_MODULE x=1 y=2"


def test_plan_of_a_module_file_resolves_depends_in_the_tree(sample_module: Path, generic_tree: KernelTree) -> None:
    plan = Planner(str(generic_tree.moddir), loaded=frozenset({"xfrm_algo"})).plan(str(sample_module))
    assert [(s.name, s.already_loaded) for s in plan.steps] == [("xfrm_algo", True), ("af_key", False)]
    assert [s.name for s in plan.to_load] == ["af_key"]


def test_a_loaded_target_plans_nothing_else(generic_tree: KernelTree) -> None:
    plan = Planner(str(generic_tree.moddir), loaded=frozenset({"ceph"})).plan("ceph")
    assert [(s.name, s.already_loaded) for s in plan.steps] == [("ceph", True)]
    assert plan.to_load == []


def test_depends_are_found_beside_the_file_first(generic_tree: KernelTree, tmp_path: Path) -> None:
    planner = Planner(str(generic_tree.moddir))
    for name in ("af_key", "xfrm_algo"):
        src = generic_tree.moddir / str(planner.tree.path_of(name)).removeprefix(f"{generic_tree.moddir}/")
        shutil.copy(src, tmp_path / src.name)
    plan = planner.plan(str(tmp_path / "af_key.ko"))
    assert [s.path for s in plan.steps] == [str(tmp_path / "xfrm_algo.ko"), str(tmp_path / "af_key.ko")]
    assert [s.reason for s in plan.steps] == [StepReason.DEPENDENCY, StepReason.TARGET]


def test_unknown_name_is_not_found(generic_tree: KernelTree) -> None:
    with pytest.raises(NotFoundError, match="no module or alias"):
        Planner(str(generic_tree.moddir)).plan("no_such_module_anywhere")


def test_undeclared_parameter_lists_declared_ones_and_suggests(generic_tree: KernelTree, tmp_path: Path) -> None:
    planner = Planner(str(generic_tree.moddir), _empty_config(generic_tree, tmp_path))
    assert planner.plan("dummy", ["numdummies=2"]).steps[-1].params == ("numdummies=2",)
    with pytest.raises(UserError) as exc:
        planner.plan("dummy", ["numdumies=2"])
    assert "did you mean numdummies?" in str(exc.value) and "declares: numdummies" in str(exc.value)
    with pytest.raises(UserError, match="declares no parameters"):
        planner.plan("af_key", ["x=1"])
    af_key = planner.tree.path_of("af_key")
    assert af_key is not None
    check_params(af_key, [])  # nothing to check


def test_parameters_of_a_built_in_module_are_refused(generic_tree: KernelTree) -> None:
    with open(generic_tree.moddir / "modules.builtin") as f:
        name = os.path.basename(f.readline().strip()).removesuffix(".ko").replace("-", "_")
    with pytest.raises(UserError, match="built into the kernel.*kernel command line"):
        Planner(str(generic_tree.moddir)).plan(name, ["x=1"])


def _project(tree: KernelTree, tmp_path: Path, params: str) -> Path:
    """A project directory holding a real module (dummy.ko) as 'kmodkit build' lays it out: PROJECT/out/KVER."""
    proj = tmp_path / "proj"
    (proj / "out" / tree.release).mkdir(parents=True)
    (proj / "kmodkit.toml").write_text(f'[module]\nname = "dummy"\nversion = "1.0"\n{params}')
    src = next(p for p in tree.modules() if p.name == "dummy.ko")
    shutil.copy(src, proj / "out" / tree.release / "dummy.ko")
    return proj


def test_manifest_defaults_come_first_and_later_sources_override(generic_tree: KernelTree, tmp_path: Path) -> None:
    proj = _project(generic_tree, tmp_path, '[parameters.numdummies]\ntype = "int"\ndefault = 2\n')
    ko = str(proj / "out" / generic_tree.release / "dummy.ko")
    plain = Planner(str(generic_tree.moddir), _empty_config(generic_tree, tmp_path))
    plan = plain.plan(ko)
    assert plan.manifest == str(proj / "kmodkit.toml")
    assert plan.steps[-1].params == ("numdummies=2",)
    assert plain.plan(ko, ["numdummies=4"]).steps[-1].params == ("numdummies=4",)
    configured = Planner(str(generic_tree.moddir), _empty_config(generic_tree, tmp_path, "options dummy numdummies=3"))
    assert configured.plan(ko).steps[-1].params == ("numdummies=3",)
    assert configured.plan(ko, ["numdummies=5"]).steps[-1].params == ("numdummies=3", "numdummies=5")
    # by name, with the manifest named explicitly
    explicit = Planner(str(generic_tree.moddir), _empty_config(generic_tree, tmp_path),
                       manifest=Manifest.load(proj / "kmodkit.toml"))
    assert explicit.plan("dummy").steps[-1].params == ("numdummies=2",)
    with pytest.raises(UserError, match="manifest of module dummy"):
        explicit.plan("af_key")


def test_manifest_default_the_module_does_not_declare_is_refused(generic_tree: KernelTree, tmp_path: Path) -> None:
    proj = _project(generic_tree, tmp_path, '[parameters.numdumies]\ntype = "int"\ndefault = 2\n')
    with pytest.raises(UserError, match=r"unknown parameter \(from .*kmodkit.toml\).*did you mean numdummies"):
        Planner(str(generic_tree.moddir), _empty_config(generic_tree, tmp_path)).plan(
            str(proj / "out" / generic_tree.release / "dummy.ko"))


def test_a_broken_project_manifest_is_reported(generic_tree: KernelTree, tmp_path: Path) -> None:
    proj = _project(generic_tree, tmp_path, "[parameters\n")
    with pytest.raises(ConfigError, match="kmodkit.toml:4"):
        Planner(str(generic_tree.moddir)).plan(str(proj / "out" / generic_tree.release / "dummy.ko"))


def test_parameter_words_split_and_join_as_the_kernel_reads_them() -> None:
    assert split_words('a=1  b="x y"\tc') == ["a=1", 'b="x y"', "c"]
    assert split_words("") == []
    assert join_params(["n=1", "greeting=hi"], ["n-x=3"], ["n=5"]) == ("greeting=hi", "n-x=3", "n=5")
    assert join_params(["n_x=1"], ["n-x=3"]) == ("n-x=3",)


def test_loader_refuses_where_the_kernel_has_no_module_support(tmp_path: Path) -> None:
    # tmp_path stands for a /proc without modules (as on this host, whose kernel has none)
    with pytest.raises(EnvironmentNotReady, match="no loadable module support"):
        Loader(procfs=str(tmp_path))


@pytest.mark.skipif(os.path.exists("/proc/modules"), reason="the host kernel has module support")
def test_cli_load_exits_3_on_a_host_without_module_support() -> None:
    done = subprocess.run([sys.executable, "-m", "kmodkit", "load", "af_key"], capture_output=True, text=True)
    assert done.returncode == 3
    assert done.stderr.startswith("error: /proc/modules: missing") and "kmodkit vm run" in done.stderr


def test_cli_dry_run_prints_the_plan(generic_tree: KernelTree) -> None:
    done = subprocess.run([sys.executable, "-m", "kmodkit", "load", "--dry-run", "-k", generic_tree.release, "ceph"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1].startswith("load    ceph ") and lines[-1].endswith("(target)")
    assert any(line.startswith("load    crc32c_generic ") and "(softdep-pre, optional)" in line for line in lines)
    bad = subprocess.run([sys.executable, "-m", "kmodkit", "load", "--dry-run", "-k", generic_tree.release, "dummy",
                          "numdumies=1"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: dummy: numdumies: unknown parameter;")


@pytest.mark.parametrize("rule", KMSG_RULES, ids=lambda r: r.reason.value + ":" + r.example[:30])
def test_each_kernel_line_rule_explains_its_own_example(rule: object, tmp_path: Path) -> None:
    from kmodkit.loader.explain import KmsgRule

    assert isinstance(rule, KmsgRule)
    why = explain("hello", errno.ENOEXEC, [KmsgRecord(4, 1, 0, rule.example)], sysfs=str(tmp_path))
    assert why.reason is rule.reason
    assert why.kernel_lines == (rule.example,)


def test_errno_alone_explains_and_unknown_errno_blames_init(tmp_path: Path) -> None:
    assert explain("m", errno.EEXIST, [], str(tmp_path)).reason is Reason.ALREADY_LOADED
    assert explain("m", errno.EPERM, [], str(tmp_path)).reason is LOAD_ERRNO[errno.EPERM].reason
    why = explain("m", errno.ENODEV, [], str(tmp_path))
    assert why.reason is Reason.INIT_FAILED and "ENODEV" in why.problem


def test_failed_install_command_is_explained_with_its_last_line(tmp_path: Path) -> None:
    why = explain_install("cramfs", "/bin/false", 1, "first\nrefused by policy\n", str(tmp_path))
    assert why.reason is Reason.INSTALL_COMMAND
    assert why.problem == "the install command of modprobe.d '/bin/false' exited with status 1: refused by policy"


def test_kmsg_record_parsing() -> None:
    rec = parse_record(b"4,1234,5678901,-;hello: Unknown symbol foo (err -2)\n SUBSYSTEM=module\n")
    assert rec == KmsgRecord(4, 1234, 5678901, "hello: Unknown symbol foo (err -2)")
    assert parse_record(b"garbage") is None


def test_install_command_parameters_are_data_not_shell(tmp_path: Path) -> None:
    """A parameter like $(cmd) reaches an install command as text: the shell expands $CMDLINE_OPTS, never runs it."""
    from kmodkit.index.resolver import StepKind, StepReason
    from kmodkit.loader.loader import run_install_command
    from kmodkit.loader.plan import PlanStep

    marker = tmp_path / "ran"
    step = PlanStep(StepKind.INSTALL, "kk_probe", None, ("x=1", f"y=$(touch {marker})", f"z=`touch {marker}`"),
                    "echo probing $MODPROBE_MODULE $CMDLINE_OPTS", StepReason.TARGET, True)
    run = run_install_command(step)
    assert run.status == 0
    assert run.output == f"probing kk_probe x=1 y=$(touch {marker}) z=`touch {marker}`\n"
    assert not marker.exists()


def test_dry_run_shows_the_plan_the_library_makes_for_a_load(generic_tree: KernelTree, tmp_path: Path) -> None:
    """One planning path (Planner.for_running_kernel) for --dry-run and the real load, and the plan wraps the
    Resolver's probe list instead of deriving it again."""
    done = subprocess.run([sys.executable, "-m", "kmodkit", "load", "--dry-run", "--json", "-k", generic_tree.release,
                           "af_key"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    plan = Planner.for_running_kernel(str(generic_tree.moddir)).plan("af_key")
    assert json.loads(done.stdout) == json.loads(json.dumps(plan.to_json()))
    fake_proc = tmp_path / "proc"  # stands for a /proc whose kernel has xfrm_algo loaded
    fake_proc.mkdir()
    (fake_proc / "modules").write_text("xfrm_algo 16384 1 af_key, Live 0x0000000000000000\n")
    plan = Planner.for_running_kernel(str(generic_tree.moddir), procfs=str(fake_proc)).plan("af_key")
    assert plan.probe is not None and plan.probe.request == "af_key"
    assert [(s.name, s.required, s.already_loaded) for s in plan.steps] == [
        (p.name, p.required, p.name == "xfrm_algo") for p in plan.probe.steps]


def test_a_refused_signed_module_is_told_to_enrol_its_key_not_to_sign() -> None:
    """Issue 11: 0.1 advised 'kmodkit sign' for a module that is signed, by a key the kernel lacks."""
    import errno

    from kmodkit.loader.explain import Reason, explain
    from kmodkit.loader.kmsg import KmsgRecord

    why = explain("hello", errno.EKEYREJECTED, [KmsgRecord(5, 1, 0, "Loading of module with unavailable key is rejected")],
                  sysfs="/nonexistent")
    assert why.reason is Reason.SIGNATURE_REFUSED
    assert "signed, by a key the kernel does not trust" in why.problem
    assert why.fix.startswith("enrol the certificate of the key that signed it (mokutil --import")
    unsigned = explain("hello", errno.EKEYREJECTED, [KmsgRecord(5, 2, 0, "Loading of unsigned module is rejected")],
                       sysfs="/nonexistent")
    assert "kmodkit sign" in unsigned.fix
