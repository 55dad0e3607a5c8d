"""A sandboxed fork server: started once per worker slot (inside bubblewrap when available), it runs programs
one at a time, each in a forked child of this small, already-started interpreter (``python -I -S``).

Protocol (JSON, one line each way): request ``{"program", "stdin", "as_main", "timeout_s", "memory_bytes",
"file_bytes", "max_processes", "max_output_bytes"}`` -> reply ``{"status", "exit_code", "stdout", "stderr",
"duration_s"}``.

Per program: a fresh working directory, ``__name__`` "__main__" (or, ``as_main`` false, unset: exec semantics),
its own session (process group), stdin from the request (or closed),
stdout / stderr to files outside its directory, rlimits (CPU, address space, file size, processes, no core),
and, after it ends or times out, every process it left behind is killed and its files are removed.
This server is non-dumpable, so programs (same uid) cannot read its memory or file descriptors.
Kept dependency-free; it never imports wmtp_jax or JAX.
"""

import json
import os
import resource
import select
import shutil
import signal
import sys
import tempfile
import time

_PR_SET_DUMPABLE = 4


def _non_dumpable() -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError, ImportError):
        pass


def _read(path: str, limit: int) -> str:
    """The file's text; beyond ``limit`` bytes, its head and last 1/8 with a marker between them."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            if size <= limit:
                return f.read().decode("utf-8", errors="replace")
            tail = limit // 8
            head = f.read(limit - tail)
            f.seek(size - tail)
            marker = f"\n[... {size - limit} bytes truncated ...]\n".encode()
            return (head + marker + f.read(tail)).decode("utf-8", errors="replace")
    except OSError:
        return ""


def _child(req: dict, workdir: str, stdin_path: str | None, out_path: str, err_path: str) -> None:
    """In the forked child: never returns."""
    try:
        os.setsid()
        os.chdir(workdir)
        fd_in = os.open(stdin_path or os.devnull, os.O_RDONLY)
        fd_out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        fd_err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        for fd, target in ((fd_in, 0), (fd_out, 1), (fd_err, 2)):
            os.dup2(fd, target)
        os.closerange(3, 1 << 16)
        cpu = int(req["timeout_s"]) + 1
        for kind, value in (
            (resource.RLIMIT_CPU, cpu),
            (resource.RLIMIT_AS, req["memory_bytes"]),
            (resource.RLIMIT_FSIZE, req["file_bytes"]),
            (resource.RLIMIT_NPROC, req["max_processes"]),
            (resource.RLIMIT_CORE, 0),
        ):
            resource.setrlimit(kind, (value, value))
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        sys.stdin = open(0, encoding="utf-8", closefd=False)
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", closefd=False)
        sys.argv = ["program.py"]
        sys.path[0] = workdir
        namespace = {"__file__": os.path.join(workdir, "program.py"), "__builtins__": __builtins__}
        if req.get("as_main", True):  # else no __name__: it resolves to the builtins module's, as under exec(p, {})
            namespace["__name__"] = "__main__"
        code = compile(req["program"], namespace["__file__"], "exec")
        del req
        exec(code, namespace)
    except SystemExit as e:
        code = e.code
        if code is None:
            status = 0
        elif isinstance(code, int):
            status = code & 0xFF
        else:
            print(code, file=sys.stderr)
            status = 1
        _flush()
        os._exit(status)
    except BaseException:
        import traceback

        traceback.print_exc()
        _flush()
        os._exit(1)
    _flush()
    os._exit(0)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def _kill_leftovers(pgid: int, own_pid_namespace: bool) -> None:
    """Kills the program's process group and anything else it started: in an own PID namespace every process
    but this server and the namespace's init; else every process of this (dropped, per-slot) uid."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
    me, uid = os.getpid(), os.getuid()
    if not own_pid_namespace and uid == 0:
        return  # neither a namespace nor an own uid: only the process group can be told apart safely
    for _ in range(3):
        others = []
        for name in os.listdir("/proc"):
            if name.isdigit() and int(name) not in (me, 1):
                try:
                    if own_pid_namespace or os.stat(f"/proc/{name}").st_uid == uid:
                        others.append(int(name))
                except OSError:
                    pass
        if not others:
            return
        for pid in others:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)


def _wait(pid: int, timeout_s: float) -> int | None:
    """The child's exit code, or None if it is still running after ``timeout_s``."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # before Linux 5.3: poll
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done, wait_status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(wait_status)
            time.sleep(0.002)
        return None
    try:
        if select.select([pidfd], [], [], timeout_s)[0]:
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        return None
    finally:
        os.close(pidfd)


def _run(req: dict, root: str, own_pid_namespace: bool) -> dict:
    start = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="wmtp_exec_", dir=root)
    with open(os.path.join(workdir, "program.py"), "w", encoding="utf-8") as f:  # for tracebacks and __file__
        f.write(req["program"])
    out_path, err_path = os.path.join(root, "stdout.txt"), os.path.join(root, "stderr.txt")
    stdin_path = None
    if req.get("stdin") is not None:
        stdin_path = os.path.join(root, "stdin.txt")
        with open(stdin_path, "w", encoding="utf-8") as f:
            f.write(req["stdin"])
    pid = os.fork()
    if pid == 0:
        _child(req, workdir, stdin_path, out_path, err_path)
    code = _wait(pid, req["timeout_s"])
    status = "timeout" if code is None else "passed" if code == 0 else "failed"
    _kill_leftovers(pid, own_pid_namespace)
    if status == "timeout":
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:  # reap anything re-parented to us
            pass
    except ChildProcessError:
        pass
    reply = {
        "status": status,
        "exit_code": code,
        "stdout": _read(out_path, req["max_output_bytes"]),
        "stderr": _read(err_path, req["max_output_bytes"]),
        "duration_s": time.monotonic() - start,
    }
    shutil.rmtree(workdir, ignore_errors=True)
    for name in os.listdir(root):  # anything else the program wrote where it could
        path = os.path.join(root, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    return reply


def main() -> None:
    _non_dumpable()
    own_pid_namespace = "--own-pid-namespace" in sys.argv[1:]
    root = tempfile.mkdtemp(prefix="wmtp_sandbox_")
    requests, replies = sys.stdin.buffer, sys.stdout
    sys.stdout = sys.stderr
    try:
        for line in requests:
            reply = _run(json.loads(line), root, own_pid_namespace)
            replies.write(json.dumps(reply) + "\n")
            replies.flush()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
