"""The sandbox (wmtp_jax.sandbox.execution): statuses, limits, stdin, truncation, and hostile programs contained."""

import os
import socket
import time

import pytest

from wmtp_jax.sandbox.execution import execute, isolation_level, start_worker_pool


def test_statuses_stdin_and_limits(tmp_path):
    marker = tmp_path / "outside.txt"
    programs = [
        "print('ok')",
        "import sys; sys.exit(3)",
        "while True: pass",
        "x = bytearray(2 * 1024 ** 3)",  # over the 256 MB address-space limit
        "print(input()[::-1])",
        "print('x' * 10_000_000)",  # huge output: killed at the file-size limit
        f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30); "
        f'open(r"{marker}", "w")\'])\nwhile True: pass',  # a child that outlives the timeout unless killed
        "import os; print(os.getcwd())",
    ]
    start = time.monotonic()
    results = execute(programs, timeout_s=2, memory_mb=256, stdin="abc", max_output_bytes=1000)
    assert time.monotonic() - start < 30
    assert [r.status for r in results] == [
        "passed",
        "failed",
        "timeout",
        "failed",
        "passed",
        "failed",
        "timeout",
        "passed",
    ]
    assert results[0].stdout == "ok\n" and results[1].exit_code == 3
    assert "MemoryError" in results[3].stderr
    assert results[4].stdout == "cba\n"
    assert results[5].stdout.startswith("x" * 800) and "bytes truncated" in results[5].stdout
    assert results[5].stdout.rstrip().endswith("x" * 100)  # head and tail kept
    assert "wmtp_exec_" in results[7].stdout  # its own temporary working directory
    assert not _sandbox_leftovers()  # the grandchild that outlived the timeout was killed
    assert not marker.exists()


def test_closed_stdin_by_default_and_per_program_stdin():
    (r,) = execute(["import sys; print(repr(sys.stdin.read()))"], timeout_s=5)
    assert r.status == "passed" and r.stdout == "''\n"
    results = execute(["print(input())"] * 2, stdin=["a", "b"], timeout_s=5)
    assert [r.stdout for r in results] == ["a\n", "b\n"]
    with pytest.raises(ValueError, match="stdin has 1 entries for 2 programs"):
        execute(["pass", "pass"], stdin=["a"])


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _sandbox_leftovers() -> list[str]:
    """Processes under the sandbox worker that are neither a per-slot server (``_zygote.py``) nor one of the
    wrappers on the way to one (bwrap / unshare): anything a program left running."""
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    parent[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    children = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)

    def mine(pid):  # started by this test process (not, e.g., another test run on the machine)
        while pid > 1:
            pid = parent.get(pid, 0)
            if pid == os.getpid():
                return True
        return False

    workers = [pid for pid in parent if "_serve()" in _cmdline(pid) and mine(pid)]

    def zygote_python(pid):  # a server or a fork of one (wrappers also name _zygote.py in their arguments)
        cmd = _cmdline(pid)
        return "_zygote.py" in cmd and not cmd.split(" ", 1)[0].endswith(("bwrap", "unshare"))

    servers = {pid for pid in parent if zygote_python(pid) and not zygote_python(parent[pid])}
    on_the_way, stack = set(), list(servers)
    while stack:  # the wrappers above each server
        pid = parent.get(stack.pop())
        if pid is not None and pid not in workers and pid not in on_the_way:
            on_the_way.add(pid)
            stack.append(pid)
    found, stack = [], [c for w in workers for c in children.get(w, [])]
    while stack:
        pid = stack.pop()
        if pid not in servers and pid not in on_the_way:
            found.append(f"{pid}: {_cmdline(pid)[:120]}")
        stack.extend(children.get(pid, []))
    return found


def test_hostile_programs_are_contained(tmp_path):
    """Each hostile program ends within its limits, nothing it started survives, and the batch's other results
    are right; the evaluator (this process) and its worker keep working afterwards."""
    outside = tmp_path / "written_outside.txt"
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    fork_bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    hostile = {
        "memory_bomb": "x = []\nwhile True:\n    x.append(bytearray(50 * 1024 * 1024))",
        "huge_output": "import sys\nwhile True:\n    sys.stdout.write('y' * 65536)",
        "deep_recursion": "import sys\nsys.setrecursionlimit(10 ** 9)\ndef f(n):\n    return f(n + 1)\nf(0)",
        "kill_parents": "import os, signal, time\nppid = os.getppid()\n"
        "grand = int(open(f'/proc/{ppid}/stat').read().rsplit(')', 1)[1].split()[1])\n"
        "for pid in (grand, ppid):\n    try:\n        os.kill(pid, signal.SIGKILL)\n"
        "    except OSError:\n        pass\ntime.sleep(1)",
        "ignore_signals": "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\n"
        "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass",
        "escape_session": "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(20)  # wmtp-escapee\n"
        "    print('escaped')\nelse:\n    time.sleep(30)",
        "write_outside": f"open(r'{outside}', 'w').write('x')",
        "socket": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)",
    }
    names = list(hostile)
    start = time.monotonic()
    # the fork bomb runs in a batch of its own: where RLIMIT_NPROC cannot bind (root without a uid to drop to) its
    # thousands of processes can starve programs beside it into a timeout, which this test would misread
    bomb = execute([fork_bomb], timeout_s=4, memory_mb=512)[0]
    results = dict(zip(names, execute([hostile[n] for n in names], timeout_s=4, memory_mb=512, max_output_bytes=4096)))
    results["fork_bomb"] = bomb
    results["after"] = execute(["print('fine')"], timeout_s=5)[0]
    assert time.monotonic() - start < 60
    statuses = {n: results[n].status for n in [*names, "fork_bomb"]}
    assert statuses["fork_bomb"] in ("timeout", "failed")
    assert statuses["memory_bomb"] == "failed" and "MemoryError" in results["memory_bomb"].stderr
    assert statuses["huge_output"] == "failed" and len(results["huge_output"].stdout) < 4200
    assert statuses["deep_recursion"] in ("failed", "timeout")  # C stack overflow, memory limit or clock
    assert statuses["kill_parents"] in ("failed", "error")
    assert not _sandbox_leftovers()
    assert statuses["ignore_signals"] == "timeout"
    assert statuses["escape_session"] == "timeout"
    assert statuses["write_outside"] == "failed" and not outside.exists()
    server.close()
    time.sleep(0.5)
    assert not _sandbox_leftovers()  # the fork bomb's children and the setsid escapee are gone
    assert results["after"].status == "passed" and results["after"].stdout == "fine\n"
    if isolation_level() != "rlimits":
        assert statuses["socket"] == "failed"


def test_kill_parents_never_reaches_the_caller():
    """Killing its parent and grandparent leaves the other programs of the batch and this process intact."""
    kill = (
        "import os, signal\nppid = os.getppid()\n"
        "grand = int(open(f'/proc/{ppid}/stat').read().rsplit(')', 1)[1].split()[1])\n"
        "for pid in (grand, ppid):\n    try:\n        os.kill(pid, signal.SIGKILL)\n    except OSError:\n"
        "        pass\n"
    )
    results = execute(["print(1)", kill, "print(2)"], timeout_s=5)
    assert [r.stdout for r in (results[0], results[2])] == ["1\n", "2\n"]
    assert results[1].status in ("failed", "error")
    assert start_worker_pool() in ("bwrap", "unshare", "rlimits")


def test_bubblewrap_isolation_when_available():
    if isolation_level() != "bwrap":
        pytest.skip("bubblewrap is not installed here (.ci/run installs it)")
    programs = [
        "open('/etc/wmtp_probe', 'w')",  # read-only root
        "import os; print(os.getpid())",  # own PID namespace
        "import os; print(sorted(os.listdir('/tmp')))",
    ]  # private /tmp
    results = execute(programs, timeout_s=5)
    assert results[0].status == "failed"
    assert results[1].status == "passed" and int(results[1].stdout) < 10
    assert results[2].stdout.count("wmtp_exec_") <= 1


def test_leftover_check_sees_running_programs():
    """The process-tree check used above does see a program's processes while they run."""
    import threading

    program = "import os, time\nif os.fork() == 0:\n    time.sleep(4)\nelse:\n    time.sleep(4)\n"
    thread = threading.Thread(target=execute, args=([program],), kwargs={"timeout_s": 3})
    thread.start()
    time.sleep(1.5)
    seen = _sandbox_leftovers()
    thread.join()
    assert len(seen) >= 2, seen  # the program and its child, while running
    assert not _sandbox_leftovers()


@pytest.mark.parametrize("level", ["unshare", "rlimits"])
def test_weaker_isolation_levels_warn_and_are_recorded(level, tmp_path):
    """Without bubblewrap the sandbox falls back (here forced with WMTP_SANDBOX) and says so."""
    import json
    import subprocess
    import sys

    script = (
        "import json, warnings\nwarnings.simplefilter('always')\n"
        "from wmtp_jax.sandbox.execution import execute, start_worker_pool\n"
        "with warnings.catch_warnings(record=True) as w:\n    level = start_worker_pool()\n"
        "r = execute(['import os; print(os.getpid())', "
        "'import socket; socket.create_connection((\"127.0.0.1\", 9), timeout=1)', 'print(input())'], "
        "timeout_s=5, stdin='x')\n"
        "print(json.dumps({'level': level, 'warned': [str(x.message) for x in w], "
        "'results': [[x.status, x.stdout] for x in r]}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=dict(os.environ, WMTP_SANDBOX=level),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    if level == "unshare" and report["level"] == "rlimits":
        pytest.skip("unshare cannot create namespaces here")
    assert report["level"] == level and any(level in m for m in report["warned"])
    statuses = [s for s, _ in report["results"]]
    assert statuses[0] == "passed" and report["results"][2] == ["passed", "x\n"]
    if level == "unshare":  # own PID namespace and no network
        assert int(report["results"][0][1]) < 10 and statuses[1] == "failed"
