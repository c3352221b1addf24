"""Load plans against modprobe's own (--show-depends), parameter checks, explanations, and the host guard."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import KernelTree
from kmodkit.errors import EnvironmentNotReady, NotFoundError, UserError
from kmodkit.loader.explain import KMSG_RULES, LOAD_ERRNO, Reason, explain
from kmodkit.loader.kmsg import KmsgRecord, parse_record
from kmodkit.loader.loader import Loader
from kmodkit.loader.plan import DependencyTree, build_plan, check_params

pytestmark = pytest.mark.kernel


def _modprobe_order(tree: KernelTree, name: str) -> list[str]:
    done = subprocess.run(["modprobe", "--show-depends", "-S", tree.release, name], capture_output=True, text=True,
                          check=True)
    return [line.split()[1] for line in done.stdout.splitlines() if line.startswith("insmod ")]


# modules without softdeps: softdep (ceph -> crc32c) comes with the index's resolver
@pytest.mark.parametrize("name", ["af_key", "9p", "nfsv4", "virtiofs", "virtio_pci", "xfrm_user"])
def test_plan_order_matches_modprobe_show_depends(generic_tree: KernelTree, name: str) -> None:
    plan = build_plan(name, [], DependencyTree(str(generic_tree.moddir)))
    assert [s.path for s in plan.steps] == _modprobe_order(generic_tree, name)


def test_plan_of_a_module_file_resolves_depends_in_the_tree(sample_module: Path, generic_tree: KernelTree) -> None:
    plan = build_plan(str(sample_module), [], DependencyTree(str(generic_tree.moddir)), frozenset({"xfrm_algo"}))
    assert [(s.name, s.already_loaded) for s in plan.steps] == [("xfrm_algo", True), ("af_key", False)]
    assert [s.name for s in plan.to_load] == ["af_key"]


def test_unknown_name_is_not_found(generic_tree: KernelTree) -> None:
    with pytest.raises(NotFoundError, match="no module or alias"):
        build_plan("no_such_module_anywhere", [], DependencyTree(str(generic_tree.moddir)))


def test_undeclared_parameter_lists_declared_ones_and_suggests(generic_tree: KernelTree) -> None:
    path = DependencyTree(str(generic_tree.moddir)).chain("dummy")
    assert path is not None
    check_params(path[-1], ["numdummies=2"])
    with pytest.raises(UserError) as exc:
        check_params(path[-1], ["numdumies=2"])
    assert "did you mean numdummies?" in str(exc.value) and "declares: numdummies" in str(exc.value)
    af_key = DependencyTree(str(generic_tree.moddir)).chain("af_key")
    assert af_key is not None
    with pytest.raises(UserError, match="declares no parameters"):
        check_params(af_key[-1], ["x=1"])


def test_loader_refuses_where_the_kernel_has_no_module_support(tmp_path: Path) -> None:
    # tmp_path stands for a /proc without modules (as on this host, whose kernel has none)
    with pytest.raises(EnvironmentNotReady, match="no loadable module support"):
        Loader(procfs=str(tmp_path))


@pytest.mark.skipif(os.path.exists("/proc/modules"), reason="the host kernel has module support")
def test_cli_load_exits_3_on_a_host_without_module_support() -> None:
    done = subprocess.run([sys.executable, "-m", "kmodkit", "load", "af_key"], capture_output=True, text=True)
    assert done.returncode == 3
    assert done.stderr.startswith("error: /proc/modules: missing") and "kmodkit vm run" in done.stderr


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


def test_kmsg_record_parsing() -> None:
    rec = parse_record(b"4,1234,5678901,-;hello: Unknown symbol foo (err -2)\n SUBSYSTEM=module\n")
    assert rec == KmsgRecord(4, 1234, 5678901, "hello: Unknown symbol foo (err -2)")
    assert parse_record(b"garbage") is None
