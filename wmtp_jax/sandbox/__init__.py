"""The sandbox: untrusted Python programs (generated code, dataset solutions) run in isolated processes
(``execution.py``; ``docs/formulas.md``, "Sandbox"). Used by evaluation, rollouts, evaluation inside training and
data labelling; ``wmtp_jax.main`` starts its worker before JAX initialises."""
