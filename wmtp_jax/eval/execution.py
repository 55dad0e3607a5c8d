"""Run untrusted Python programs, each in its own process with resource limits (DESIGN.md section 6).

Each program gets: a fresh temporary working directory, closed (or given) stdin, its own session and
process group (the whole group is killed on timeout), and rlimits on CPU time, address space, file size,
process count and core dumps, applied by a tiny launcher before ``exec`` of an isolated interpreter
(``python -I -S``). stdout / stderr go to size-limited files and are returned truncated.

Isolation (``isolation_level()``): with bubblewrap (``bwrap``) the program also runs with a read-only root,
a private /tmp holding only its working directory, no network and its own PID namespace (everything in it
dies with the sandbox); without it, a warning is issued once and only the limits above apply.
Processes are started with ``subprocess`` (fork + immediate exec: nothing of the parent, JAX included,
runs in the child), so it is safe to call from a process where JAX is initialised.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Sequence

_LAUNCHER = str(Path(__file__).with_name("_launcher.py"))
STATUSES = ("passed", "failed", "timeout", "error")


@dataclasses.dataclass(frozen=True)
class ExecutionResult:
    """``status``: passed (exit 0), failed (non-zero exit), timeout (killed at the wall-clock limit),
    error (could not be run). ``stdout`` / ``stderr`` are truncated to ``max_output_bytes``."""

    status: str
    exit_code: int | None
    stdout: str
    stderr: str
    duration_s: float


@functools.lru_cache(maxsize=1)
def isolation_level() -> str:
    """"bwrap" when bubblewrap can create namespaces here, else "rlimits" (warned once)."""
    bwrap = shutil.which("bwrap")
    if bwrap:
        probe = subprocess.run([bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-all",
                                "--die-with-parent", "true"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return "bwrap"
    warnings.warn("bubblewrap (bwrap) is not available or cannot create namespaces here: generated programs run "
                  "with resource limits only (no filesystem / network / PID isolation); install the 'bubblewrap' "
                  "package for the full sandbox", stacklevel=2)
    return "rlimits"


def _sandbox_prefix(workdir: Path) -> list[str]:
    if isolation_level() != "bwrap":
        return []
    # the interpreter, its standard library and the launcher stay visible even when they live under /tmp
    needed = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(_LAUNCHER),
                                             os.path.dirname(os.path.realpath(sys.executable)))}
    under_tmp = sorted(p for p in needed if p == "/tmp" or p.startswith("/tmp/"))
    binds = [arg for p in under_tmp for arg in ("--ro-bind", p, p)]
    return [shutil.which("bwrap"), "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
            *binds, "--bind", str(workdir), str(workdir), "--chdir", str(workdir), "--unshare-all",
            "--die-with-parent", "--new-session", "--"]


def _read(path: Path, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", errors="replace")
    except OSError:
        return ""


def _run_one(program: str, stdin: str | None, timeout_s: float, memory_mb: int, max_output_bytes: int,
             max_processes: int) -> ExecutionResult:
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="wmtp_exec_") as tmp:
        tmp = Path(tmp)
        (tmp / "program.py").write_text(program, encoding="utf-8")
        out_path, err_path = tmp / "stdout.txt", tmp / "stderr.txt"
        file_limit = max(max_output_bytes * 4, 1 << 20)
        args = _sandbox_prefix(tmp) + [sys.executable, "-I", "-S", _LAUNCHER, str(int(timeout_s) + 1), str(memory_mb << 20), str(file_limit),
                str(max_processes), str(tmp / "program.py")]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "TMPDIR": str(tmp), "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                proc = subprocess.Popen(args, cwd=tmp, env=env, stdout=out, stderr=err,
                                        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                        start_new_session=True, close_fds=True)
                try:
                    if stdin is not None:
                        try:
                            proc.stdin.write(stdin.encode())
                            proc.stdin.close()
                        except (BrokenPipeError, OSError):
                            pass
                    proc.wait(timeout=timeout_s)
                    status = "passed" if proc.returncode == 0 else "failed"
                except subprocess.TimeoutExpired:
                    status = "timeout"
                finally:
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)  # the program's whole process group
                    except (ProcessLookupError, PermissionError):
                        pass
                    proc.wait()
        except OSError as e:
            return ExecutionResult("error", None, "", f"could not start the program: {e}", time.monotonic() - start)
        return ExecutionResult(status, proc.returncode, _read(out_path, max_output_bytes),
                               _read(err_path, max_output_bytes), time.monotonic() - start)


def execute(programs: Sequence[str], *, timeout_s: float = 10.0, memory_mb: int = 1024, stdin=None,
            max_output_bytes: int = 64 * 1024, max_processes: int = 64, max_workers: int | None = None,
            ) -> list[ExecutionResult]:
    """Runs each complete Python source in ``programs`` in its own limited process; results in order.

    Args:
      programs: Python sources.
      timeout_s: wall-clock limit per program (CPU limit = this + 1 s).
      memory_mb: address-space limit per program.
      stdin: None (closed stdin), one string for every program, or one string per program.
      max_output_bytes: stdout / stderr kept per program.
      max_processes: RLIMIT_NPROC (stops fork bombs).
      max_workers: programs run at once (default: CPU count).
    """
    if stdin is None or isinstance(stdin, str):
        stdins = [stdin] * len(programs)
    else:
        stdins = list(stdin)
        if len(stdins) != len(programs):
            raise ValueError(f"stdin has {len(stdins)} entries for {len(programs)} programs")
    workers = max_workers or os.cpu_count() or 1
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(_run_one, p, s, timeout_s, memory_mb, max_output_bytes, max_processes)
                   for p, s in zip(programs, stdins)]
        return [f.result() for f in futures]
