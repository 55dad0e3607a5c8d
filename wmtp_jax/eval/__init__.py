"""Evaluation: sandboxed execution of generated programs (execution.py)."""
