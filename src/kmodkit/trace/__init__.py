"""Measuring a loaded module in the kernel it runs in: ftrace through tracefs, CPU samples through perf.

* :mod:`kmodkit.trace.tracefs`: the tracefs mount, its files, and the settings a run changes and restores.
* :mod:`kmodkit.trace.functions`: the module's functions, which of them ftrace can trace, and why not.
* :mod:`kmodkit.trace.graph`: the function_graph tracer's text, as calls, durations and a call tree.
* :mod:`kmodkit.trace.tracer`: ``kmodkit trace``: one run of function_graph around a workload.
* :mod:`kmodkit.trace.perf`: ``kmodkit profile``: ``perf record`` / ``perf script``, folded stacks, hot functions.
* :mod:`kmodkit.trace.flamegraph`: the SVG flame graph of folded stacks.
"""
