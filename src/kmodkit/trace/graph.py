"""The function_graph tracer's text output, read into calls, durations and a call tree.

One line per event, as tracefs prints it with the ``funcgraph-proc`` option on
(the task on every line, so that a task that sleeps inside a function and one
that runs meanwhile on the same CPU keep separate stacks; a stack is a pid's)::

     0)    sh-129     |               |  hello_write [hello]() {
     0)    sh-129     |   2.645 us    |    hello_step [hello]();
     1)    sh-129     | # 2948.129 us |  }

An entry (``{``) opens a call on the task's stack, ``}`` closes it with its
duration, a leaf (``();``) is both.  The parser keeps no line: it folds each
event into per-function durations and a tree of call paths as it goes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class CallNode:
    """One call path of the tree: a function reached through its ancestors' calls."""

    name: str  #: the function
    calls: int = 0  #: calls made through this path
    total_us: float = 0.0  #: time of the finished calls, microseconds
    children: dict[str, CallNode] = field(default_factory=dict)  #: callee name -> its node

    def child(self, name: str) -> CallNode:
        """The node of ``name`` called from here, made on first use."""
        node = self.children.get(name)
        if node is None:
            node = self.children[name] = CallNode(name)
        return node

    def to_json(self) -> dict[str, object]:
        """The subtree as JSON: name, calls, total_us, children (most called first)."""
        return {"name": self.name, "calls": self.calls, "total_us": round(self.total_us, 3),
                "children": [c.to_json() for c in sorted(self.children.values(), key=lambda n: -n.calls)]}


@dataclass(frozen=True)
class FunctionStats:
    """Calls and durations of one function over a trace."""

    name: str  #: the function
    calls: int  #: calls seen (entries)
    timed: int  #: calls whose end was seen too (the durations below are over these)
    total_us: float  #: sum of durations, microseconds
    mean_us: float  #: mean duration
    p50_us: float  #: median duration (nearest rank)
    p99_us: float  #: 99th percentile duration (nearest rank)
    max_us: float  #: longest call

    def to_json(self) -> dict[str, object]:
        """The statistics as JSON (durations in microseconds)."""
        return {"name": self.name, "calls": self.calls, "timed": self.timed, "total_us": round(self.total_us, 3),
                "mean_us": round(self.mean_us, 3), "p50_us": self.p50_us, "p99_us": self.p99_us,
                "max_us": self.max_us}


def _rank(sorted_values: list[float], q: float) -> float:
    # nearest-rank percentile: the smallest value with at least q of the values at or below it
    if not sorted_values:
        return 0.0
    k = math.ceil(q * len(sorted_values)) - 1
    return sorted_values[max(0, min(len(sorted_values) - 1, k))]


def stats_of(name: str, calls: int, durations: list[float]) -> FunctionStats:
    """The statistics of one function from its call count and finished durations."""
    d = sorted(durations)
    total = sum(d)
    return FunctionStats(name, calls, len(d), total, total / len(d) if d else 0.0, _rank(d, 0.5), _rank(d, 0.99),
                         d[-1] if d else 0.0)


@dataclass
class GraphTrace:
    """What a function_graph trace held, folded as it was read (:meth:`feed`)."""

    root: CallNode = field(default_factory=lambda: CallNode("<root>"))  #: the call tree; its children are entries
    durations: dict[str, list[float]] = field(default_factory=dict)  #: function -> finished durations (us)
    events: int = 0  #: entry, exit and leaf lines read
    lost: int = 0  #: events the kernel dropped (its "[LOST N EVENTS]" lines)
    unmatched_exits: int = 0  #: exits whose entry was before the trace began
    _stacks: dict[str, list[tuple[str, CallNode]]] = field(default_factory=dict)
    _partial: str = ""
    _kinds: dict[str, tuple[int, str]] = field(default_factory=dict)
    _tasks: dict[str, str] = field(default_factory=dict)

    def feed(self, text: str) -> None:
        """Read a piece of the trace; a line cut at the end of the piece is kept for the next one."""
        text = self._partial + text
        cut = text.rfind("\n") + 1
        self._partial = text[cut:]
        self.feed_lines(text[:cut].splitlines())

    def finish(self) -> None:
        """Read what is left of the last piece."""
        if self._partial:
            self.feed_lines([self._partial])
            self._partial = ""

    def feed_lines(self, lines: Iterable[str]) -> None:
        """Read whole lines of the trace."""
        # the function column and the CPU/task column repeat line after line: each distinct text is
        # classified once (kind, name) and then found in a dict, which keeps 1,000,000 events near a second
        kinds = self._kinds
        tasks = self._tasks
        stacks = self._stacks
        durations = self.durations
        root = self.root
        events = 0
        for line in lines:
            parts = line.rsplit("|", 2)
            if len(parts) != 3:
                if "[LOST " in line:
                    self.lost += _lost_count(line)
                continue
            head, dur, text = parts
            kind = kinds.get(text)
            if kind is None:
                kind = kinds[text] = _classify(text)
            if kind[0] == 0:
                continue  # an irq marker, a comment, a header
            events += 1
            task = tasks.get(head)
            if task is None:
                # the pid alone: ftrace prints "<...>-131" until the task's name is in its saved_cmdlines, and
                # "sh-131" after, for the same task and often inside one call
                shown = head[head.find(")") + 1:].strip()
                task = tasks[head] = shown[shown.rfind("-") + 1:]
            stack = stacks.get(task)
            if stack is None:
                stack = stacks[task] = []
            if kind[0] == 3:
                if not stack:
                    self.unmatched_exits += 1
                    continue
                name, node = stack.pop()
                us = _micros(dur)
                if us is not None:
                    node.total_us += us
                    durations[name].append(us)
                continue
            name = kind[1]
            parent = stack[-1][1] if stack else root
            node = parent.children.get(name)  # type: ignore[assignment]
            if node is None:
                node = parent.children[name] = CallNode(name)
                if name not in durations:
                    durations[name] = []
            node.calls += 1
            if kind[0] == 1:
                stack.append((name, node))
            else:
                us = _micros(dur)
                if us is not None:
                    node.total_us += us
                    durations[name].append(us)
        self.events += events

    @property
    def calls(self) -> dict[str, int]:
        """Function -> calls, over every path of the tree."""
        out: dict[str, int] = {}
        todo = [self.root]
        while todo:
            node = todo.pop()
            for child in node.children.values():
                out[child.name] = out.get(child.name, 0) + child.calls
                todo.append(child)
        return out

    def stats(self) -> list[FunctionStats]:
        """Per-function statistics, most total time first."""
        out = [stats_of(n, c, self.durations.get(n, [])) for n, c in self.calls.items()]
        out.sort(key=lambda s: (-s.total_us, -s.calls, s.name))
        return out

    def callers(self) -> dict[tuple[str, str], int]:
        """(caller, callee) -> calls over the whole tree; the caller of an entry point is ``<root>``."""
        edges: dict[tuple[str, str], int] = {}
        todo = [self.root]
        while todo:
            node = todo.pop()
            for child in node.children.values():
                key = (node.name, child.name)
                edges[key] = edges.get(key, 0) + child.calls
                todo.append(child)
        return edges


def _classify(text: str) -> tuple[int, str]:
    # (1, name) an entry "f [mod]() {", (2, name) a leaf "f();", (3, "") an exit "}" (or "} /* f */"), (0, "") else
    text = text.strip()
    if text.endswith("{"):
        kind = 1
    elif text.endswith(");"):
        kind = 2
    elif text[:1] == "}":
        return (3, "")
    else:
        return (0, "")
    name = text[:text.find("(")]
    bracket = name.find(" [")
    if bracket >= 0:
        name = name[:bracket]
    return (kind, name.strip())


def _lost_count(line: str) -> int:
    # "CPU:0 [LOST 123 EVENTS]", or "CPU:0 [LOST EVENTS]" when the kernel does not know how many: at least one
    try:
        return int(line.split("[LOST ", 1)[1].split()[0])
    except (IndexError, ValueError):
        return 1


def parse(text: str) -> GraphTrace:
    """The trace of a whole function_graph text."""
    g = GraphTrace()
    g.feed_lines(text.splitlines())
    return g


def _micros(duration: str) -> float | None:
    """The microseconds of a function_graph duration column ("+ 12.345 us"), None when it holds none."""
    words = duration.split()
    if len(words) >= 2 and words[-1] == "us":
        try:
            return float(words[-2])
        except ValueError:
            return None
    return None
