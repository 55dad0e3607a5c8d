"""Runs inside the sandbox: judges one completion of a HumanEval+ / MBPP+ problem on one input set (base or plus)
as ``evalplus.eval.untrusted_check`` does (EvalPlus 0.3.1, fast check: stop at the first failing input).

Request (stdin, JSON; read once, then stdin is closed): ``{"solution", "tests", "time_limits", "token"}``; ``tests``
is the file ``_evalplus_canonical.py`` wrote (a header ``{"dataset", "entry_point", "atol", "n"}``, then one pickled
``(arguments, expected output)`` per input, read one at a time). The solution is exec'd in a fresh namespace without
``__name__`` (not ``"__main__"``), its stdout / stderr discarded; each call gets its own wall-clock limit
(``time_limits[i]`` seconds, SIGALRM). The verdict is one line on the original stdout, ``"{token} passed {n}"`` or
``"{token} failed {i} {reason}"``; the judge trusts a verdict only with the request's random token.

Comparison (EvalPlus's): equal outputs pass; otherwise, when ``atol`` is non-zero (a float expected output turns an
``atol`` of 0 into 1e-6 for that input and every later one, as in EvalPlus), the output must have the expected
output's type and length and be within ``|out - exp| <= atol + 1e-7 |exp|`` elementwise (``numpy.allclose``); plus
EvalPlus's per-task special oracles (below). Standard library only (the sandbox runs ``python -I -S``).
"""

import json
import math
import os
import pickle
import signal
import sys

# EvalPlus's special oracles (evalplus/eval/_special_oracle.py): MBPP tasks whose outputs are compared as sets, or
# only for being None, and three tasks whose answers are checked against a formula.
SET_EQUAL = {"similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly", "larg_nnum",
             "intersection_array", "find_dissimilar", "Diff"}  # fmt: skip
NOT_NONE = {"check_str", "text_match_three", "text_starta_endb"}


def surface_area(base_edge, height):  # Mbpp/581: square pyramid, rounded
    slant = math.sqrt((base_edge / 2) ** 2 + height**2)
    return round(base_edge**2 + 2 * base_edge * slant)


def digit_distance(a, b):  # Mbpp/558: digits compared after zero-padding to the same length
    x, y = str(a), str(b)
    width = max(len(x), len(y))
    return sum(abs(int(p) - int(q)) for p, q in zip(x.zfill(width), y.zfill(width)))


def polynomial(xs, x):  # HumanEval/32 (find_zero): the answer must be a root
    return sum(c * math.pow(x, i) for i, c in enumerate(xs))


class InputTimeout(BaseException):
    pass


def _alarm(signum, frame):
    raise InputTimeout


def is_floats(x):
    return isinstance(x, float) or (isinstance(x, (list, tuple)) and bool(x) and all(isinstance(v, float) for v in x))


def allclose(out, exp, atol, rtol=1e-7):
    """numpy.allclose(out, exp, rtol, atol) for numbers and equally shaped nested lists / tuples of them."""
    if isinstance(exp, (list, tuple)) or isinstance(out, (list, tuple)):
        if not (isinstance(exp, (list, tuple)) and isinstance(out, (list, tuple))) or len(out) != len(exp):
            return False
        return all(allclose(o, e, atol, rtol) for o, e in zip(out, exp))
    numbers = (int, float, complex)
    if not (isinstance(out, numbers) and isinstance(exp, numbers)):
        return False
    if out == exp:  # equal infinities
        return True
    if any(isinstance(v, float) and (math.isnan(v) or math.isinf(v)) for v in (out, exp)):
        return False
    return abs(out - exp) <= atol + rtol * abs(exp)


def matches(dataset, entry_point, args, out, exp, atol):
    """``(passed, atol for the next input)``."""
    exact = out == exp
    if dataset == "mbpp":
        if entry_point == "are_equivalent":  # Mbpp/164: any answer that returns
            exact = True
        elif entry_point == "sum_div":  # Mbpp/295
            exact = exact or out == 0
        elif entry_point == "surface_Area":  # Mbpp/581
            exact = exact or abs(out - surface_area(*args)) <= atol
        elif entry_point == "digit_distance_nums":  # Mbpp/558
            exact = exact or out == digit_distance(*args)
        elif entry_point in SET_EQUAL:
            exact = set(out) == set(exp)
        elif entry_point in NOT_NONE:
            exact = out == exp if isinstance(out, bool) else exp == (out is not None)
    if dataset == "humaneval" and entry_point == "find_zero":
        return abs(polynomial(*args, out)) <= atol, atol
    if atol == 0 and is_floats(exp):
        atol = 1e-6
    if not exact and atol != 0:
        if type(out) is not type(exp):
            return False, atol
        return allclose(out, exp, atol), atol
    return bool(exact), atol


def main():
    request = json.loads(sys.stdin.read())
    token = request.pop("token")
    verdict_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)

    def report(line):
        os.write(verdict_fd, f"{token} {line}\n".encode())

    try:
        tests = open(request["tests"], "rb")
        header = pickle.load(tests)
    except (OSError, pickle.UnpicklingError, EOFError) as e:
        report(f"error -1 cannot read the tests file {request['tests']}: {e}")
        os._exit(2)
    dataset, entry_point, atol = header["dataset"], header["entry_point"], header["atol"]
    signal.signal(signal.SIGALRM, _alarm)
    try:
        namespace = {"__builtins__": __builtins__}
        exec(compile(request["solution"], "solution.py", "exec"), namespace)
        fn = namespace[entry_point]
    except BaseException as e:
        report(f"failed -1 {type(e).__name__}: {str(e)[:200]}")
        os._exit(1)
    for i, limit in enumerate(request["time_limits"]):
        args, exp = pickle.load(tests)
        try:
            signal.setitimer(signal.ITIMER_REAL, limit)
            try:
                out = fn(*args)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            passed, atol = matches(dataset, entry_point, args, out, exp, atol)
            reason = "" if passed else "wrong output"
        except InputTimeout:
            passed, reason = False, f"exceeded its time limit of {limit:.2f} s"
        except BaseException as e:
            passed, reason = False, f"{type(e).__name__}: {str(e)[:200]}"
        del exp
        if not passed:
            report(f"failed {i} {reason}")
            os._exit(1)
    report(f"passed {header['n']}")
    os._exit(0)


if __name__ == "__main__":
    main()
