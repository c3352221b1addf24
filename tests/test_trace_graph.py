"""The function_graph text reader: calls, durations, per-task stacks, lost events, the call tree.

The traces here are written by hand in the exact format tracefs prints (funcgraph-proc on); the
real kernel's output is read by tests/test_trace_vm.py.
"""

from __future__ import annotations

import pytest

from kmodkit.errors import UserError
from kmodkit.trace.graph import GraphTrace, parse, stats_of
from kmodkit.trace.tracer import Trace

TRACE = """\
# tracer: function_graph
#
# CPU  TASK/PID         DURATION                  FUNCTION CALLS
# |     |    |           |   |                     |   |   |   |
 0)    sh-129     |               |  hello_write [hello]() {
 0)    sh-129     | ! 127.138 us  |    hello_step [hello]();
 0)    sh-129     |   9.799 us    |    hello_step [hello]();
 0)    sh-130     |               |  hello_write [hello]() {
 0)    sh-130     |   2.500 us    |    hello_step [hello]();
 ------------------------------------------
 1)    sh-129     =>    sh-130
 ------------------------------------------
 1)    sh-129     | # 10948.129 us |  }
CPU:1 [LOST 12 EVENTS]
 0)    sh-130     | + 30.500 us   |  }
 0)    sh-131     |   1.000 us    |  } /* hello_write [hello] */
"""


def test_calls_and_durations_of_interleaved_tasks() -> None:
    g = parse(TRACE)
    by = {s.name: s for s in g.stats()}
    assert by["hello_write"].calls == 2 and by["hello_write"].timed == 2
    assert by["hello_write"].max_us == 10948.129 and by["hello_write"].p50_us == 30.5
    assert by["hello_step"].calls == 3
    assert by["hello_step"].total_us == pytest.approx(139.437)
    assert g.lost == 12
    assert g.unmatched_exits == 1  # sh-131's exit began before the trace
    assert g.callers() == {("<root>", "hello_write"): 2, ("hello_write", "hello_step"): 3}


def test_a_task_shown_as_dots_until_its_name_is_known_keeps_one_stack() -> None:
    # ftrace prints "<...>-PID" for a task whose name is not in its saved_cmdlines yet, then "sh-PID": one
    # task, one stack (keyed on the task text, the steps below were counted under no caller and the call
    # never ended: 13 of 91 in a booted 6.12 guest)
    g = parse(""" 1)   <...>-131    |               |  hello_write [hello]() {
 1)   <...>-131    |   3.000 us    |    hello_step [hello]();
 0)    sh-131     |   2.000 us    |    hello_step [hello]();
 0)    sh-131     | + 40.000 us   |  }
""")
    assert g.callers() == {("<root>", "hello_write"): 1, ("hello_write", "hello_step"): 2}
    assert {s.name: s.timed for s in g.stats()}["hello_write"] == 1 and g.unmatched_exits == 0


def test_feeding_in_pieces_cut_mid_line_gives_the_same_result() -> None:
    whole = parse(TRACE)
    g = GraphTrace()
    for i in range(0, len(TRACE), 7):
        g.feed(TRACE[i:i + 7])
    g.finish()
    assert g.stats() == whole.stats() and g.events == whole.events == 8


def test_percentiles_are_nearest_rank() -> None:
    s = stats_of("f", 100, [float(i) for i in range(1, 101)])
    assert (s.p50_us, s.p99_us, s.max_us, s.mean_us) == (50.0, 99.0, 100.0, 50.5)
    assert stats_of("f", 3, []).p99_us == 0.0


def test_the_tree_nests_kernel_callees_under_module_functions() -> None:
    text = """\
 0)    sh-9     |               |  hello_write [hello]() {
 0)    sh-9     |               |    msleep() {
 0)    sh-9     |   1.000 us    |      __msecs_to_jiffies();
 0)    sh-9     | @ 10100.000 us |    }
 0)    sh-9     | @ 10200.000 us |  }
"""
    tree = parse(text).root.to_json()
    write = tree["children"][0]  # type: ignore[index]
    assert write["name"] == "hello_write" and write["total_us"] == 10200.0
    assert write["children"][0]["children"][0]["name"] == "__msecs_to_jiffies"


@pytest.mark.parametrize("kwargs", [{}, {"duration": 0.0}, {"duration": float("nan")},
                                    {"duration": 1.0, "functions": ("a b",)}])
def test_trace_refuses_what_it_cannot_do(kwargs: dict[str, object]) -> None:
    with pytest.raises(UserError):
        Trace("hello", **kwargs)  # type: ignore[arg-type]
