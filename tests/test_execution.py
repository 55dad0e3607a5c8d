"""The process sandbox used to label data: statuses, limits, stdin, truncated output, process-group kill."""

import time

from wmtp_jax.eval.execution import execute


def test_statuses_stdin_and_limits(tmp_path):
    marker = tmp_path / "outside.txt"
    programs = [
        "print('ok')",
        "import sys; sys.exit(3)",
        "while True: pass",
        "x = bytearray(2 * 1024 ** 3)",                      # over the 256 MB address-space limit
        "print(input()[::-1])",
        "print('x' * 10_000_000)",                           # huge output: killed at the file-size limit
        f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30); "
        f"open(r\"{marker}\", \"w\")'])\nwhile True: pass",  # a child that outlives the timeout unless killed
        "import os; print(os.getcwd())",
    ]
    start = time.monotonic()
    results = execute(programs, timeout_s=2, memory_mb=256, stdin="abc", max_output_bytes=1000)
    assert time.monotonic() - start < 30
    assert [r.status for r in results] == ["passed", "failed", "timeout", "failed", "passed", "failed", "timeout",
                                           "passed"]
    assert results[0].stdout == "ok\n" and results[1].exit_code == 3
    assert "MemoryError" in results[3].stderr
    assert results[4].stdout == "cba\n"
    assert len(results[5].stdout) == 1000
    assert "wmtp_exec_" in results[7].stdout  # its own temporary working directory
    time.sleep(1)
    assert not marker.exists()  # the grandchild died with the process group


def test_closed_stdin_by_default():
    (r,) = execute(["import sys; print(repr(sys.stdin.read()))"], timeout_s=5)
    assert r.status == "passed" and r.stdout == "''\n"


def test_bubblewrap_isolation_when_available(tmp_path):
    import pytest

    from wmtp_jax.eval.execution import isolation_level

    if isolation_level() != "bwrap":
        pytest.skip("bubblewrap is not installed here (.ci/run installs it)")
    outside = tmp_path / "outside.txt"
    programs = [f"open(r'{outside}', 'w').write('x')",                          # read-only root
                "import socket; socket.create_connection(('127.0.0.1', 9), timeout=1)",  # no network
                "import os; print(os.getpid())"]                                  # own PID namespace
    results = execute(programs, timeout_s=5)
    assert results[0].status == "failed" and not outside.exists()
    assert results[1].status == "failed"
    assert results[2].status == "passed" and int(results[2].stdout) < 10
