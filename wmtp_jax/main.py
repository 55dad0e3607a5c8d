"""Entry point: ``python -m wmtp_jax.main --config=configs/EXPERIMENT.py[:micro] [--config.KEY=VALUE ...]``.

Only wires things up: load the config, apply and validate every override (all problems reported at once),
then hand the config to its job (``c.job``: train, eval, rollout or forward).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiment config file, e.g. configs/rho1.py:micro", lock_config=False
)
flags.mark_flags_as_required(["config"])
_OVERRIDES: list[str] = []


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax / JAX info lines drown the progress output
    c = _CONFIG.value
    if _runs_generated_code(c):  # the sandbox's worker starts before JAX initialises (never a fork of it)
        from wmtp_jax.eval.execution import start_worker_pool

        start_worker_pool()
    from wmtp_jax import config as config_lib
    from wmtp_jax import distributed

    found = config_lib.apply_overrides(c, _OVERRIDES)
    if not found:
        try:  # before anything touches a device
            distributed.initialize(c)
        except Exception as e:
            print(
                f"error: could not start the multi-process runtime with {distributed.settings(c)}: "
                f"{type(e).__name__}: {e}",
                file=sys.stderr,
            )
            sys.exit(2)
    if not found:
        from wmtp_jax import storage

        try:  # s3:// inputs become local mirrors before anything reads them (every process: its own disk)
            storage.localize(c)
        except storage.StorageError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
    found += config_lib.problems(c)
    if found:
        print("error: " + str(config_lib.ConfigError(found)), file=sys.stderr)
        sys.exit(2)
    if c.job == "forward":
        from wmtp_jax import forward

        forward.run(c)
    elif c.job == "eval":
        from wmtp_jax.eval import run as eval_run

        results = eval_run.evaluate(c)
        print(f"done: results in {c.workdir}/eval/results.json (sandbox isolation: {results['sandbox_isolation']})")
    elif c.job == "study":
        from wmtp_jax.study import runner

        runner.run(c)
    elif c.job == "rollout":
        from wmtp_jax.eval import run as eval_run

        eval_run.rollout(c)
    elif c.get("dry_run"):
        from wmtp_jax.train.dry_run import dry_run

        dry_run(c)
    else:
        from wmtp_jax.train import loop

        result = loop.train(c)
        failed = result.get("mlflow_failed_calls")
        note = f"; {failed} MLflow calls failed (metrics.jsonl is complete)" if failed else ""
        print(f"done: {result['steps']} steps; final model in {result['final_dir']}{note}")


def _runs_generated_code(c) -> bool:
    """Whether the job executes generated code (so the sandbox worker must start now, before JAX): evaluation,
    rollouts, studies, or training with evaluation on — read from the config and the raw overrides, which are
    parsed (importing JAX) only later."""
    if c.job in ("eval", "rollout", "study"):
        return True
    raw = dict(item.partition("=")[::2] for item in _OVERRIDES)
    train = c.get("train", {})
    every = raw.get("train.eval_every_steps", str(train.get("eval_every_steps", 0)))
    at_end = raw.get("train.eval_at_end", str(train.get("eval_at_end", False)))
    return every.strip() not in ("0", "") or at_end.strip().lower() in ("true", "1", "yes")


def _print_help() -> None:
    import glob

    configs = sorted(
        os.path.basename(p) for p in glob.glob("configs/*.py") if not p.endswith(("__init__.py", "base.py"))
    )
    print(__doc__)
    print("configs (run from the repository root):", ", ".join(configs) or "none found in ./configs")
    print("presets: append ':micro' for the local stand-in (micro models, shipped data, a few minutes on a laptop)")
    print("every config value can be overridden: --config.KEY=VALUE (e.g. --config.train.num_steps=100)\n")
    print(flags.FLAGS.main_module_help())


def run() -> None:
    if len(sys.argv) == 1 or any(a in ("-h", "--help", "--helpfull", "-?") for a in sys.argv[1:]):
        _print_help()
        return
    sys.path.insert(0, ".")  # config files import `configs.base` from the working directory
    argv = []
    for arg in sys.argv:  # --config.KEY=VALUE overrides are applied (and checked, all together) in main
        if arg.startswith("--config."):
            _OVERRIDES.append(arg[len("--config.") :])
        else:
            argv.append(arg)
    sys.argv = argv  # ml_collections also reads sys.argv for overrides
    app.run(main, argv=argv)


if __name__ == "__main__":
    run()
