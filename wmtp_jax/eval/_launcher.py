"""Runs inside the sandbox: apply resource limits, fork, run the program in the child, mirror its exit.

argv: cpu_seconds address_space_bytes file_size_bytes max_processes program.py

The launcher stays as the program's parent, so a program that kills its parent kills only this launcher
(the evaluator sees a failed run and kills the rest of the process group). The child runs the program in
its already-started, isolated interpreter (``python -I -S``): one interpreter start per program.
Kept tiny and dependency-free; it never imports wmtp_jax or JAX.
"""

import os
import resource
import signal
import sys


def main() -> None:
    cpu, memory, fsize, nproc, program = sys.argv[1:6]
    limits = [(resource.RLIMIT_CPU, int(cpu)), (resource.RLIMIT_AS, int(memory)), (resource.RLIMIT_FSIZE, int(fsize)),
              (resource.RLIMIT_NPROC, int(nproc)), (resource.RLIMIT_CORE, 0)]
    for kind, value in limits:
        resource.setrlimit(kind, (value, value))
    pid = os.fork()
    if pid == 0:
        sys.argv = [program]
        sys.path[0] = os.path.dirname(os.path.abspath(program))
        with open(program, encoding="utf-8") as f:
            code = compile(f.read(), program, "exec")
        namespace = {"__name__": "__main__", "__file__": program, "__builtins__": __builtins__}
        exec(code, namespace)
        return
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


if __name__ == "__main__":
    main()
