"""Evaluation: generation, benchmarks and their judges, pass@k; programs run in ``wmtp_jax.sandbox``."""
