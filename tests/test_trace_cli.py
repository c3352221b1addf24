"""The trace/profile CLI seam: flags onto the library objects, one error line for bad requests,
and what the tracefs layer writes back (against a fake tracefs: a directory of plain files,
standing in for the kernel's, which tests/test_trace_vm.py uses for real)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kmodkit.cli import profile as profile_cli
from kmodkit.cli import trace as trace_cli
from kmodkit.cli.main import _build_parser, main
from kmodkit.errors import EnvironmentNotReady
from kmodkit.trace.tracefs import TraceFs


@pytest.mark.parametrize("argv, workload, graph, functions", [
    (["trace", "hello", "--", "true"], ("true",), False, []),
    (["trace", "hello", "--graph", "--functions", "hello_*", "--", "sh", "-c", "x --y"], ("sh", "-c", "x --y"),
     True, ["hello_*"]),
    (["trace", "--graph", "hello", "--duration", "2"], (), True, []),
])
def test_trace_flags_before_and_after_the_module(argv: list[str], workload: tuple[str, ...], graph: bool,
                                                 functions: list[str]) -> None:
    args = _build_parser("trace").parse_args(argv)
    assert trace_cli.workload_of(args, trace_cli.options) == workload
    assert (args.graph, args.functions) == (graph, functions)


def test_profile_flags_after_the_module() -> None:
    args = _build_parser("profile").parse_args(["profile", "hello", "--svg", "a.svg", "--frequency", "99", "--",
                                                "sh", "-c", "x", "--json"])
    assert trace_cli.workload_of(args, profile_cli.options) == ("sh", "-c", "x", "--json")
    assert (args.svg, args.frequency, args.json) == ("a.svg", 99, False)


@pytest.mark.parametrize("argv", [["trace", "hello"], ["trace", "hello", "--duration", "-1"],
                                  ["profile", "hello", "--frequency", "0", "--", "true"], ["profile", "hello"]])
def test_bad_requests_get_one_error_line_and_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_not_mounted_names_the_mount_command_fake_tracefs(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("proc /proc proc rw 0 0\n")
    if Path("/sys/kernel/tracing/current_tracer").exists():
        pytest.skip("this machine has tracefs mounted at its usual place")
    with pytest.raises(EnvironmentNotReady, match="mount -t tracefs nodev /sys/kernel/tracing"):
        TraceFs.find(mount=False, mounts=str(mounts))


def test_restore_writes_back_filters_pids_and_options_fake_tracefs(tmp_path: Path) -> None:
    (tmp_path / "options").mkdir()
    fs = TraceFs(str(tmp_path))
    files = {"tracing_on": "1\n", "current_tracer": "function\n",
             "set_ftrace_filter": "schedule\nhello_step [hello]\n", "set_graph_function": "hello_write [hello]\n",
             "set_ftrace_pid": "no pid\n", "options/funcgraph-proc": "0\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with fs.saved(list(files)):
        for name in files:
            (tmp_path / name).write_text("changed\n")
    # a plain file keeps what was written last: the kernel's files take these words back
    assert (tmp_path / "set_ftrace_filter").read_text() == "schedule\nhello_step:mod:hello\n"
    assert (tmp_path / "set_graph_function").read_text() == "hello_write\n"  # no :mod: command there
    assert (tmp_path / "set_ftrace_pid").read_text() == ""
    assert (tmp_path / "current_tracer").read_text() == "function"
    assert (tmp_path / "options/funcgraph-proc").read_text() == "0"
    assert (tmp_path / "tracing_on").read_text() == "1"  # switched back on last


def test_an_unexpanded_buffer_is_restored_to_the_size_it_would_have_had_fake_tracefs(tmp_path: Path) -> None:
    # before any tracer ran, buffer_size_kb reads "7 (expanded: 1410)": writing back "7" left a 7 KiB buffer
    # behind (the next tool lost most of its events); the kernel would have grown it to 1410
    fs = TraceFs(str(tmp_path))
    (tmp_path / "buffer_size_kb").write_text("7 (expanded: 1410)\n")
    with fs.saved(["buffer_size_kb"]):
        (tmp_path / "buffer_size_kb").write_text("8192\n")
    assert (tmp_path / "buffer_size_kb").read_text() == "1410"
    (tmp_path / "buffer_size_kb").write_text("4096\n")
    with fs.saved(["buffer_size_kb"]):
        (tmp_path / "buffer_size_kb").write_text("8192\n")
    assert (tmp_path / "buffer_size_kb").read_text() == "4096"


def test_restore_tries_every_file_and_raises_the_first_failure_fake_tracefs(tmp_path: Path) -> None:
    fs = TraceFs(str(tmp_path))
    (tmp_path / "current_tracer").write_text("nop\n")
    (tmp_path / "max_graph_depth").write_text("0\n")
    with pytest.raises(Exception):
        with fs.saved(["current_tracer", "max_graph_depth"]):
            (tmp_path / "current_tracer").unlink()
            (tmp_path / "current_tracer").mkdir()  # now unwritable
            (tmp_path / "max_graph_depth").write_text("5\n")
    assert (tmp_path / "max_graph_depth").read_text() == "0"
