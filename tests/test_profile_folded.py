"""perf script's text folded into FlameGraph's format, and the module's hot functions read from it.

The text is written here in the layout `perf script -F comm,tid,ip,sym` prints (checked against a
real perf 6.1 run in a booted guest by tests/test_trace_vm.py).
"""

from __future__ import annotations

import pytest

from kmodkit.errors import UserError
from kmodkit.trace.perf import Profile, parse_perf_script, summarize

SCRIPT = """\
sh   158
\tffffffffc03a1010 hello_step
\tffffffffc03a10c0 hello_write
\tffffffff8132b31b proc_reg_write
\tffffffff81367395 vfs_write
\t          f838f __GI___libc_write

sh   159
\tffffffff81b4c2a0 native_queued_spin_lock_slowpath
\tffffffff81b4bf10 _raw_spin_lock
\tffffffffc03a1060 hello_step_locked
\tffffffffc03a10c0 hello_write
\tffffffff8132b31b proc_reg_write

swapper     0
\tffffffff81a4d1ab default_idle

kworker/0:1 H   33
\tffffffff81a4d1ab process_one_work
\t7375746174732f31 [unknown]
"""
MODULE = frozenset({"hello_write", "hello_step", "hello_step_locked"})


def test_samples_are_read_outermost_first_with_the_task_first() -> None:
    samples = list(parse_perf_script(SCRIPT.splitlines()))
    assert samples[0] == ["sh", "__GI___libc_write", "vfs_write", "proc_reg_write", "hello_write", "hello_step"]
    assert samples[2] == ["swapper", "default_idle"]
    assert samples[3] == ["kworker/0:1_H", "[unknown]", "process_one_work"]


def test_hot_functions_and_the_kernel_functions_under_them() -> None:
    r = summarize("hello", MODULE, parse_perf_script(SCRIPT.splitlines()), 999)
    assert (r.samples, r.module_samples) == (4, 2)
    hot = {h.name: h for h in r.hot}
    assert (hot["hello_write"].inclusive, hot["hello_write"].own) == (2, 0)
    assert hot["hello_step"].own == 1
    assert hot["hello_step_locked"].below == (("native_queued_spin_lock_slowpath", 1),)
    assert "sh;proc_reg_write;hello_write;hello_step_locked;_raw_spin_lock;native_queued_spin_lock_slowpath 1\n" \
        in r.folded_text()
    assert sum(n for _, n in r.folded) == 4


@pytest.mark.parametrize("kwargs", [{}, {"frequency": 0, "duration": 1.0}, {"duration": -1.0}])
def test_profile_refuses_what_it_cannot_do(kwargs: dict[str, object]) -> None:
    with pytest.raises(UserError):
        Profile("hello", **kwargs)  # type: ignore[arg-type]
