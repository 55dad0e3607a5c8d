"""Computes a HumanEval+ / MBPP+ problem's expected outputs: runs its canonical solution on every input, as
``evalplus.gen.util.trusted_exec`` does (each input deep-copied, each call timed), in a fresh ``python -I -S``.

Request (stdin, pickle): ``{"canonical", "entry_point", "inputs": {"base": [...], "plus": [...]}, "not_none",
"header": {...}, "files": {"base": path, "plus": path}}``. Each kind's file gets a stream of pickles: the header
with ``"n"`` (inputs) added, then ``(arguments, expected output)`` per input, which the judge's driver reads one at
a time (an output can be hundreds of MB: MBPP+ 255). Reply (stdout, JSON): ``{"seconds": {"base": [...],
"plus": [...]}}`` or ``{"error": text}``. ``not_none``: outputs recorded only as "is not None" (EvalPlus does this
for three MBPP tasks whose outputs are match objects). Standard library only.
"""

import copy
import json
import pickle
import sys
import time
import traceback


def main():
    request = pickle.load(sys.stdin.buffer)
    reply_stream = sys.stdout
    sys.stdout = sys.stderr
    try:
        namespace = {}
        exec(compile(request["canonical"], "canonical_solution.py", "exec"), namespace)
        fn = namespace[request["entry_point"]]
        seconds = {}
        for kind, inputs in request["inputs"].items():
            seconds[kind] = []
            with open(request["files"][kind], "wb") as f:
                pickle.dump({**request["header"], "n": len(inputs)}, f)
                for args in inputs:
                    call_args = copy.deepcopy(args)
                    start = time.perf_counter()
                    out = fn(*call_args)
                    seconds[kind].append(time.perf_counter() - start)
                    pickle.dump((args, out is not None if request["not_none"] else out), f)
        reply = {"seconds": seconds}
    except BaseException:
        reply = {"error": traceback.format_exc()[-2000:]}
    json.dump(reply, reply_stream)


if __name__ == "__main__":
    main()
