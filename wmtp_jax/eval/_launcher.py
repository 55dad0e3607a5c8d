"""Runs inside the sandboxed child: apply resource limits, then exec the program with an isolated Python.

argv: cpu_seconds address_space_bytes file_size_bytes max_processes program.py
Kept tiny and dependency-free; it never imports wmtp_jax or JAX.
"""

import os
import resource
import sys


def main() -> None:
    cpu, memory, fsize, nproc, program = sys.argv[1:6]
    limits = [(resource.RLIMIT_CPU, int(cpu)), (resource.RLIMIT_AS, int(memory)), (resource.RLIMIT_FSIZE, int(fsize)),
              (resource.RLIMIT_NPROC, int(nproc)), (resource.RLIMIT_CORE, 0)]
    for kind, value in limits:
        resource.setrlimit(kind, (value, value))
    os.execv(sys.executable, [sys.executable, "-I", "-S", "-B", program])


if __name__ == "__main__":
    main()
