"""Small inputs in the CodeContests schema (correct and incorrect Python 2/3, C++ and Java solutions)."""

import json

PY3, PY2, CPP, JAVA = 3, 1, 2, 4


def problem(name, difficulty, correct, incorrect, description=None, tests=True):
    """``correct`` / ``incorrect``: lists of (language code, source)."""
    return {
        "name": name,
        "description": description or f"Read n and print n * 2. ({name})",
        "public_tests": {"input": ["3\n"] if tests else [], "output": ["6\n"] if tests else []},
        "private_tests": {"input": [], "output": []},
        "generated_tests": {"input": [], "output": []},
        "source": 2,
        "difficulty": difficulty,
        "solutions": {"language": [c[0] for c in correct], "solution": [c[1] for c in correct]},
        "incorrect_solutions": {"language": [c[0] for c in incorrect], "solution": [c[1] for c in incorrect]},
        "cf_contest_id": 1,
        "cf_index": "A",
        "cf_rating": 800,
        "cf_tags": ["math"],
    }


GOOD = "n = int(input())\nprint(n * 2)\n"
BAD = "n = int(input())\nprint(n + 2)\n"


def standard_problems():
    """12 problems over difficulties 1..11 with 2 correct + 1 incorrect Python solution each, plus C++/Java."""
    out = []
    for i in range(12):
        d = 1 + i % 11
        out.append(
            problem(
                f"{1000 + i}_A. Problem {i}",
                d,
                correct=[
                    (PY3, GOOD),
                    (PY2, GOOD.replace("print(n * 2)", "print n * 2")),
                    (CPP, "int main(){}"),
                    (JAVA, "class A{}"),
                ],
                incorrect=[(PY3, BAD), (CPP, "int main(){return 1;}")],
            )
        )
    return out


def write_jsonl(path, rows, extra_lines=()):
    with open(path, "wb") as f:
        for row in rows:
            f.write(json.dumps(row).encode() + b"\n")
        for line in extra_lines:
            f.write(line + b"\n")
    return path
