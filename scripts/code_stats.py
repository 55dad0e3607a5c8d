"""Size of the package, for reviewing its layout: modules, the largest module, the longest functions, and imports
of the project's own modules placed inside functions.

Usage: ``python scripts/code_stats.py [PACKAGE_DIR]`` (default ``wmtp_jax``). Lines are physical lines of the file
(docstrings and comments included); a function's length runs from its ``def`` (decorators excluded) to its last
line.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def main(package: Path) -> None:
    modules = sorted(p for p in package.rglob("*.py"))
    sizes, functions, inner_imports = [], [], 0
    for path in modules:
        text = path.read_text()
        sizes.append((len(text.splitlines()), str(path)))
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((node.end_lineno - node.lineno + 1, f"{path}::{node.name}"))
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith(package.name):
                        inner_imports += 1
                    elif isinstance(inner, ast.Import):
                        inner_imports += sum(a.name.startswith(package.name) for a in inner.names)
    sizes.sort(reverse=True)
    functions.sort(reverse=True)
    print(f"modules: {len(modules)} ({sum(n for n, _ in sizes)} lines)")
    print(f"largest module: {sizes[0][1]} ({sizes[0][0]} lines)")
    print("longest functions:")
    for n, name in functions[:5]:
        print(f"  {n:4d}  {name}")
    print(f"imports of {package.name} modules inside functions: {inner_imports}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "wmtp_jax"))
