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
        from wmtp_jax.sandbox.execution import start_worker_pool

        start_worker_pool()
    from wmtp_jax import config as config_lib
    from wmtp_jax import distributed, jobs, run_config, storage  # JAX and every job: after the sandbox worker

    found = config_lib.apply_overrides(c, _OVERRIDES, run_config.FREE_FORM, run_config.PRESETS)
    run = None
    try:  # the one typed run config; keys no section declares are errors naming the file
        run = run_config.parse(c, source=_config_file())
    except config_lib.ConfigError as e:
        found += e.problems
    if run is not None and not found:
        try:  # s3:// inputs become local mirrors before anything reads them (every process: its own disk)
            run, _ = storage.localize(run)
        except storage.StorageError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
    if run is not None and not found:
        try:  # before anything touches a device
            distributed.initialize(run)
        except Exception as e:
            print(
                f"error: could not start the multi-process runtime with {distributed.settings(run)}: "
                f"{type(e).__name__}: {e}",
                file=sys.stderr,
            )
            sys.exit(2)
    if run is not None:
        found += jobs.problems(run)
    if found:
        print("error: " + str(config_lib.ConfigError(found)), file=sys.stderr)
        sys.exit(2)
    print(jobs.run(run))


def _config_file() -> str:
    """The config file named on the command line (``configs/rho1.py`` of ``--config=configs/rho1.py:micro``)."""
    return config_flags.get_config_filename(flags.FLAGS["config"]).split(":", 1)[0]


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
