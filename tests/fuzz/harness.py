"""Run ``kmodkit`` on batches of fuzz inputs and check the README's promises for each command.

Each command runs in its own process group under a memory limit and a
timeout (a hang is killed with its workers).  Checked for every run: exit
status never 4, no traceback, no hang, every ``error:`` line names an input of
the batch and no input twice, every input gets its own line (described, or an
``error:`` naming it), the unmutated controls are processed like good files, an
``error:`` line never comes with exit 0.  Two oracles on top: a module `sign`
writes holds every byte of the module it read (all compressed streams), and
`verify` never calls valid a signature whose struct module_signature the
kernel refuses.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from fuzz.corpus import KERNEL_SIG_INFO, MAGIC, SIG_INFO, TRAILER, Input, decompress_all, split_signature

#: every reader-facing command the harness drives, in the order a batch runs them
COMMANDS = ("info", "info-F", "info-json", "info-summary", "index", "deps", "sign", "verify")
RELEASE = "6.1.0-fuzz"
MEMORY_LIMIT = 2 << 30  #: address-space limit of each kmodkit run: a runaway read fails instead of eating the host


@dataclass
class Finding:
    """One broken promise: what, in which command, and the inputs that show it (one when bisected)."""

    kind: str  #: exit4, traceback, hang, batch_abandoned, lacking, control_lost, error_exit0, sign_body, ...
    command: str  #: one of COMMANDS
    detail: str  #: the message, with paths and numbers normalised (findings group by kind, command, detail)
    inputs: list[Input] = field(default_factory=list)  #: the culprit(s); the whole batch when not known
    message: str = ""  #: the first real line of output that shows it

    @property
    def group(self) -> tuple[str, str, str]:
        """What findings of the same cause share."""
        return self.kind, self.command, self.detail


@dataclass
class Run:
    """One kmodkit invocation on a batch."""

    command: str  #: one of COMMANDS
    status: int | None  #: exit status, None when killed after the timeout
    stdout: str  #: its standard output
    stderr: str  #: its standard error
    seconds: float  #: wall time
    paths: dict[str, Input]  #: the item each input appears as (a path, or a module name for deps)
    findings: list[Finding] = field(default_factory=list)  #: what it broke


def normalise(text: str) -> str:
    """A message with paths, numbers and quoted values replaced, so the same cause groups together."""
    if not text.startswith("error: internal error: "):
        text = re.sub(r"^error: [^:]*: ", "error: ITEM: ", text)  # the item (a path, a name, an alias)
    text = re.sub(r"/\S+", "PATH", text)
    text = re.sub(r"'[^']*'", "'X'", text)
    text = re.sub(r"\b(0x[0-9a-fA-F]+|\d+)\b", "N", text)
    text = re.sub(r"\\x[0-9a-fA-F]{2}", "\\\\xNN", text)
    return text[:160]


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _input_kind(raw: bytes, data: bytes) -> str:
    """What sort of module an input is, as far as the sign oracle cares: compressed, or its trailer's fields."""
    if raw != data:
        return "compressed input"
    if len(data) >= TRAILER and data.endswith(MAGIC):
        fields = SIG_INFO.unpack_from(data, len(data) - TRAILER)
        names = ("algo", "hash", "id_type", "signer_len", "key_id_len", "pad")
        odd = [n for n, got, want in zip(names, fields, KERNEL_SIG_INFO) if got != want]
        if odd:
            return "signed input, its trailer's " + ("signer_len/key_id_len" if {"signer_len", "key_id_len"} & set(odd)
                                                    else "algo/hash/id_type/pad") + " not the kernel's"
        if fields[-1] > len(data) - TRAILER:
            return "signed input, sig_len past the start"
        return "signed input"
    return "unsigned input"


def _errors(stderr: str, level: str = "error") -> list[tuple[str, str]]:
    """(item, line) of every ``error: ITEM: why`` line (``warning: ITEM: why`` with ``level="warning"``)."""
    found = []
    head = f"{level}: "
    for line in stderr.splitlines():
        if line.startswith(head) and ": " in line[len(head):] and not line.startswith(f"{level}: internal error: "):
            found.append((line[len(head):].split(": ", 1)[0], line))
    return found


def _json_errors(stdout: str) -> list[tuple[str, str]]:
    """(item, line) of every error record in a --json list document (``{"path": ITEM, "error": {...}}``)."""
    try:
        docs = json.loads(stdout)
    except ValueError:
        return []
    if isinstance(docs, dict) and isinstance(docs.get("error"), dict):  # a whole failure: {"error": E}
        docs = [{"path": docs["error"].get("what", ""), **docs}]
    return [(str(d.get("path", "")), f"error: {d.get('path', '')}: {d['error'].get('why', '')}")
            for d in docs if isinstance(d, dict) and isinstance(d.get("error"), dict)] if isinstance(docs, list) else []


class Harness:
    """Batches of inputs through kmodkit's commands, in ``workdir``, with a key for `sign` and `verify`."""

    def __init__(self, workdir: Path, key: Path, cert: Path, timeout: float = 120.0,
                 python: str = sys.executable) -> None:
        self.workdir = workdir
        self.key, self.cert = key, cert
        self.timeout = timeout
        self.python = python
        self.config = workdir / "empty.d"  # no depmod.d / modprobe.d of the machine
        self.config.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, XDG_CACHE_HOME=str(workdir / "cache"), HOME=str(workdir / "home"),
                        LC_ALL="C.UTF-8")
        self.env.pop("KMODKIT_TEST_REAL_CACHE", None)
        self._serial = 0

    # -- writing a batch ---------------------------------------------------------------------------------

    def _fresh_dir(self, command: str) -> Path:
        self._serial += 1
        path = self.workdir / f"{self._serial:06d}-{command}"
        path.mkdir(parents=True)
        return path

    @staticmethod
    def write(directory: Path, inputs: Iterable[Input]) -> dict[str, Input]:
        """Write ``inputs`` into ``directory``; return them by absolute path."""
        out = {}
        for item in inputs:
            path = directory / item.filename
            if item.special == "fifo":
                os.mkfifo(path)
            elif item.special == "dev_zero":
                path.symlink_to("/dev/zero")
            elif item.special == "dev_null":
                path.symlink_to("/dev/null")
            elif item.special == "directory":
                path.mkdir()
            elif item.special == "dangling":
                path.symlink_to(directory / "does-not-exist.ko")
            elif item.special == "loop":
                path.symlink_to(path)
            else:
                path.write_bytes(item.data)
            out[str(path)] = item
        return out

    # -- running -----------------------------------------------------------------------------------------

    def _exec(self, argv: list[str], timeout: float) -> tuple[int | None, str, str, float]:
        start = time.monotonic()
        proc = subprocess.Popen([self.python, "-m", "kmodkit", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, env=self.env, cwd=self.workdir, start_new_session=True,
                                preexec_fn=_limit)
        try:
            out, err = proc.communicate(timeout=timeout)
            status: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the run's own process group: kmodkit and its workers
            out, err = proc.communicate()
            status = None
        return status, out.decode(errors="replace"), err.decode(errors="replace"), time.monotonic() - start

    def run(self, command: str, inputs: list[Input], timeout: float | None = None) -> Run:
        """One command over ``inputs`` (written afresh), checked."""
        timeout = self.timeout if timeout is None else timeout
        base = self._fresh_dir(command)
        if command in ("index", "deps"):
            moddir = base / "lib" / "modules" / RELEASE
            (moddir / "kernel" / "fuzz").mkdir(parents=True)
            paths = self.write(moddir / "kernel" / "fuzz", inputs)
            argv = ["index", "-C", str(self.config), "-b", str(base), RELEASE]
            if command == "deps":
                # deps reads the index kmodkit wrote; its items are module names
                self._exec(argv, timeout)
                if not (moddir / "modules.dep.bin").exists():
                    return Run(command, 0, "", "", 0.0, {})  # no index to resolve in: the index run reports it
                names = {Path(p).name.split(".")[0]: item for p, item in paths.items()}
                paths = names
                argv = ["deps", "-C", str(self.config), "--no-cmdline", "-b", str(base), "-k", RELEASE,
                        "--show-depends", *names]
        else:
            paths = self.write(base, inputs)
            files = list(paths)
            argv = {
                "info": ["info", *files],
                "info-F": ["info", "-F", "name", *files],
                "info-json": ["info", "--json", *files],
                "info-summary": ["info", "--summary", *files],
                "sign": ["sign", "--key", str(self.key), "--cert", str(self.cert), "--replace", "-j", "2", *files],
                "verify": ["verify", "--cert", str(self.cert), "-j", "2", *files],
            }[command]
        status, out, err, seconds = self._exec(argv, timeout)
        run = Run(command, status, out, err, seconds, paths)
        self._check(run, base)
        return run

    # -- checking ----------------------------------------------------------------------------------------

    def _check(self, run: Run, base: Path) -> None:
        batch = list(run.paths.values())
        add = run.findings.append
        if run.status is None:
            add(Finding("hang", run.command, "no exit within the timeout", batch))
            return
        if run.status == 4:
            line = next((ln for ln in run.stderr.splitlines() if "internal error" in ln), run.stderr[-200:])
            add(Finding("exit4", run.command, normalise(line), batch, line))
        elif run.status not in (0, 1, 2, 3):
            add(Finding("bad_status", run.command, f"exit status {run.status}", batch, run.stderr[-300:]))
        if "Traceback (most recent call last)" in run.stderr:
            last = [ln for ln in run.stderr.splitlines() if ln and not ln.startswith(" ")][-1:]
            add(Finding("traceback", run.command, normalise(last[0] if last else ""), batch,
                        last[0] if last else ""))
        errors = _errors(run.stderr)
        if run.command == "info-json":  # --json puts each item's error in the document
            errors += _json_errors(run.stdout)
        named: dict[str, str] = {}
        for what, line in errors:
            if what not in run.paths:
                add(Finding("bad_error_line", run.command, "error line names no input: " + normalise(line), [], line))
            elif what in named and run.command not in ("deps",):
                add(Finding("bad_error_line", run.command, "two error lines for one input", [run.paths[what]], line))
            named.setdefault(what, line)
        if errors and run.status == 0:
            add(Finding("error_exit0", run.command, normalise(errors[0][1]),
                        [run.paths[i] for i, _ in errors if i in run.paths][:1], errors[0][1]))
        if run.status == 4:
            return  # the rest of the batch is lost to the internal error: counted as that
        done = self._described(run, base)
        if done is None:
            return
        if not done and len(named) <= 1 and len(run.paths) > 1:
            # nothing described, at most one complaint: one item stopped the whole batch
            why = errors[0][1] if errors else (run.stderr.strip().splitlines() or ["no output"])[-1]
            add(Finding("batch_abandoned", run.command, normalise(why), batch, why))
            return
        # the index warns of what depmod calls an unsupported file type and goes on (exit 0, as depmod)
        warned = {what for what, _ in _errors(run.stderr, "warning")} if run.command == "index" else set()
        for item_path, item in run.paths.items():
            if item_path not in done and item_path not in named and item_path not in warned \
                    and self._must_answer(run.command, item):
                add(Finding("lacking", run.command, "an input got no line of its own", [item]))
        for item_path, item in run.paths.items():
            if item.control and item_path not in done:
                why = named.get(item_path, "no output")
                add(Finding("control_lost", run.command, normalise(why), [item], why))
        if run.command == "sign":
            self._check_sign(run, done)
        if run.command == "verify":
            self._check_verify(run)

    @staticmethod
    def _must_answer(command: str, item: Input) -> bool:
        # the index walks a tree as depmod does: directories and broken links are not module files there
        # (depmod names devices and FIFOs: "unsupported file type"); sign and verify search a directory
        if item.special == "directory":
            return False
        return not (command in ("index", "deps") and item.special in ("dangling", "loop"))

    def _described(self, run: Run, base: Path) -> set[str] | None:
        """The items the command reports as processed, or None when the output cannot say per item."""
        if run.command == "info":
            return set(re.findall(r"^filename:\s+(.+)$", run.stdout, re.M))
        if run.command == "info-json":
            try:
                docs = json.loads(run.stdout) if run.stdout.strip() else []
            except ValueError:
                run.findings.append(Finding("bad_output", run.command, "--json output is not JSON",
                                            list(run.paths.values()), run.stdout[:200]))
                return None
            return {d.get("filename", "") for d in docs if isinstance(d, dict)} if isinstance(docs, list) else set()
        if run.command == "info-summary":
            m = re.match(r"(\d+) module files?", run.stdout)
            if m is None or int(m.group(1)) != len(run.paths):
                run.findings.append(Finding("lacking", run.command, "the summary does not count every input",
                                            list(run.paths.values()), run.stdout[:200]))
            return None
        if run.command == "index":
            dep = base / "lib" / "modules" / RELEASE / "modules.dep"
            if not dep.exists():
                return set()
            moddir = dep.parent
            return {str(moddir / line.split(":", 1)[0]) for line in dep.read_text(errors="replace").splitlines()}
        if run.command == "deps":
            return {name for name in run.paths if re.search(rf"/{re.escape(name)}\.ko\S*\s*$", run.stdout, re.M)}
        if run.command == "sign":
            return {tok for line in run.stdout.splitlines() for tok in line.split() if tok in run.paths}
        if run.command == "verify":
            return {p for p in run.paths if f"\n{p}: " in "\n" + run.stdout}
        return None  # info -F: values carry no file name

    def _check_sign(self, run: Run, done: set[str]) -> None:
        for path in done:
            item = run.paths[path]
            try:
                written = Path(path).read_bytes()
            except OSError:
                continue
            before = decompress_all(item.data)
            if before is None:
                continue  # the oracle cannot read what sign read: no verdict on what it wrote
            after = decompress_all(written)
            if after is None:
                run.findings.append(Finding("sign_body", run.command, "sign wrote a file that does not decompress",
                                            [item]))
                continue
            body, trailer = split_signature(after)
            candidates = {before, split_signature(before)[0]}
            if not trailer or not body.startswith(b"\x7fELF") or body not in candidates:
                what = ("cut to fewer bytes" if any(c.startswith(body) and c != body for c in candidates)
                        else "not the module it read")
                run.findings.append(Finding("sign_body", run.command, f"the signed module's body is {what} "
                                            f"({_input_kind(item.data, before)})", [item],
                                            f"{path}: {len(body)} of {len(split_signature(before)[0])} bytes signed"))

    def _check_verify(self, run: Run) -> None:
        for path, item in run.paths.items():
            if f"\n{path}: valid signature" not in "\n" + run.stdout:
                continue
            data = decompress_all(item.data) or b""
            if len(data) < TRAILER or not data.endswith(MAGIC):
                continue
            fields = SIG_INFO.unpack_from(data, len(data) - TRAILER)[:-1]
            if fields != KERNEL_SIG_INFO:
                names = ("algo", "hash", "id_type", "signer_len", "key_id_len", "pad")
                bad = [n for n, got, want in zip(names, fields, KERNEL_SIG_INFO) if got != want]
                run.findings.append(Finding("verify_valid_kernel_refuses", run.command,
                                            "valid though the kernel refuses " + ",".join(bad), [item]))

    # -- narrowing a batch finding to one input ----------------------------------------------------------

    def bisect(self, command: str, inputs: list[Input], same: Callable[[Run], bool], timeout: float = 30.0,
               budget: int = 12) -> list[Input]:
        """The smallest part of ``inputs`` (ideally one) on which ``command`` still shows ``same``."""
        current = inputs
        while len(current) > 1 and budget > 0:
            half = len(current) // 2
            for part in (current[:half], current[half:]):
                budget -= 1
                if same(self.run(command, part, timeout)):
                    current = part
                    break
            else:
                break  # it takes both halves together
        return current
