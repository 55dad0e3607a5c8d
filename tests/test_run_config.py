"""The config tree: every shipped config parses into the typed RunConfig, unknown keys are errors naming the file,
free-form maps take new keys on the command line, and each job validates its own sections."""

import dataclasses
import importlib
import sys
from pathlib import Path

import pytest

from wmtp_jax import config as config_lib
from wmtp_jax import jobs
from wmtp_jax import run_config as rc
from wmtp_jax.schema import ConfigError

REPO = Path(__file__).resolve().parent.parent
CONFIGS = ("baseline", "critic", "verifiable", "rho1", "ref_tuning", "eval", "rollout", "forward", "study")


def load(name: str, preset: str = "micro"):
    sys.path.insert(0, str(REPO))
    return importlib.import_module(f"configs.{name}").get_config(preset)


@pytest.mark.parametrize("preset", ["", "micro"])
def test_every_shipped_config_parses_into_typed_sections(preset):
    for name in CONFIGS:
        run = rc.parse(load(name, preset), f"configs/{name}.py")
        assert isinstance(run, rc.RunConfig) and isinstance(run.model.lora, rc.LoraConfig)
        if run.job == "train":
            assert isinstance(run.train, rc.TrainConfig) and isinstance(run.data, rc.DataConfig)
            assert run.train.early_stopping == rc.EarlyStoppingConfig()
    ref = rc.parse(load("ref_tuning", preset))
    assert ref.model.checkpoint == ref.reference.checkpoint  # the field reference is resolved


@pytest.mark.parametrize("preset", ["", "micro"])
def test_the_design_recipes_hold_their_documented_settings(preset):
    rho1 = rc.parse(load("recipes.rho1", preset), "configs/recipes/rho1.py")
    w = rho1.weighting
    assert (w.rho1_scheme, w.rho1_mode, w.rho1_top_p, w.rho1_temperature, w.strength) == (
        "seed", "absolute", 0.15, 0.5, 0.5,
    )  # fmt: skip
    assert rho1.objective == "rho1" and w.problems() == []
    stage2 = rc.parse(load("recipes.verifiable", preset)).weighting
    assert (stage2.beta, stage2.w_min, stage2.w_max) == (0.9, 0.1, 5.0)
    budgets = {name: rc.parse(load(f"recipes.{name}", preset)).train for name in ("ref_tuning", "critic", "verifiable")}
    expected = (
        {"ref_tuning": 200_000, "critic": 50_000, "verifiable": 200_000} if not preset else dict.fromkeys(budgets, 80)
    )
    assert {name: t.num_samples for name, t in budgets.items()} == expected
    assert all(t.num_epochs == 0 and t.problems() == [] for t in budgets.values())
    both = rc.parse(load("ref_tuning", "")).train
    assert "set it or train.num_epochs, not both" in " ".join(dataclasses.replace(both, num_samples=10).problems())


def test_num_samples_sets_the_steps_from_the_batch():
    from types import SimpleNamespace

    from wmtp_jax.train.loop import resolve_schedule

    c = rc.parse(load("recipes.ref_tuning", ""))
    resolved = resolve_schedule(c, SimpleNamespace())  # no packing: the index is not read
    assert resolved.train.num_steps == 200_000 // 32 and resolved.train.batch_size == 32


def test_defaults_are_declared_once_in_the_sections():
    c = rc.parse(load("baseline", ""))
    assert c.train.warmup_steps == rc.OptimizerConfig().warmup_steps == 50
    from wmtp_jax.eval.protocols import PROTOCOLS

    # a training run's eval section: the section's defaults + the MTP paper's protocol + the shipped benchmarks
    expected = rc.EvalConfig(
        protocol="mtp_paper", benchmarks=("mbpp", "humaneval", "humaneval_plus", "mbpp_plus"), **PROTOCOLS["mtp_paper"]
    )
    assert c.eval == expected and c.weighting == rc.WeightingConfig() and c.mesh == rc.MeshConfig()
    assert c.data.buckets == rc.DataConfig().buckets and c.checkpoint == rc.CheckpointConfig()


def test_an_unknown_key_in_a_config_file_names_the_file_and_the_key():
    c = load("baseline")
    c.train.nmu_steps = 3
    c.weighting.rho1_ratoi = 0.5
    with pytest.raises(ConfigError) as e:
        rc.parse(c, "configs/baseline.py")
    assert e.value.problems == [
        "configs/baseline.py: unknown config key train.nmu_steps",
        "configs/baseline.py: unknown config key weighting.rho1_ratoi",
    ]
    assert jobs.problems(c, n_devices=4) == [
        "the config: unknown config key train.nmu_steps",
        "the config: unknown config key weighting.rho1_ratoi",
    ]


def test_free_form_maps_take_new_keys_on_the_command_line_and_nothing_else_does():
    c = load("study")
    found = config_lib.apply_overrides(
        c,
        [
            "mlflow.tags.team=nlp",
            "study.arms.dft.config=baseline",
            "study.arms.dft.overrides=('weighting.strength=0.5',)",
            "study.arms.dft.colour=red",
            "train.num_steps=3",
        ],
        rc.FREE_FORM,
    )
    assert found == ["study.arms.dft.colour: unknown config key", "train.num_steps: unknown config key"]
    run = rc.parse(c)
    assert run.mlflow.tags == {"team": "nlp"}
    assert run.study.arms["dft"] == rc.ArmConfig("baseline", ("weighting.strength=0.5",), (), True)


def test_each_job_validates_its_own_sections_all_at_once():
    c = load("baseline")
    config_lib.apply_overrides(c, ["train.num_steps=0", "train.ce_chunk=0", "train.early_stopping.patience=0"])
    config_lib.apply_overrides(c, ["checkpoint.keep=0", "data.strategy=best", "model.dtype=float8"])
    config_lib.apply_overrides(c, ["train.eval_benchmarks=('mbpp', 'humaneval_plus')"])  # no validation split
    text = "\n".join(jobs.problems(c, n_devices=4))
    keys = ("train.num_steps=0", "train.ce_chunk=0", "train.early_stopping.patience=0", "checkpoint.keep=0")
    for key in (*keys, "train.eval_benchmarks=('mbpp', 'humaneval_plus')"):
        assert key in text, key
    assert "data.strategy='best'" in text and "model.dtype='float8'" in text
    e = load("eval")
    config_lib.apply_overrides(e, ["eval.k=(1, 5)", "eval.top_p=0"])
    text = "\n".join(jobs.problems(e, n_devices=4))
    assert "eval.k=(1, 5)" in text and "eval.top_p=0" in text and "train." not in text


def test_protocol_presets_resolve_to_their_documented_settings_and_explicit_keys_win():
    from wmtp_jax.eval.protocols import PROTOCOLS, deviations, temperatures

    mtp = rc.parse(load("eval", "")).eval  # production: the MTP paper's protocol
    assert (mtp.protocol, mtp.n_samples, mtp.k, mtp.k_temperatures) == ("mtp_paper", 200, (1, 10, 100), (0.2, 0.8, 0.8))
    assert temperatures(mtp) == {0.2: (1,), 0.8: (10, 100)} and deviations(mtp) == {}
    assert rc.parse(load("rho1", "")).train.eval_at_end and not rc.parse(load("rho1")).train.eval_at_end
    micro = rc.parse(load("eval")).eval
    assert (micro.protocol, micro.n_samples, micro.k, micro.temperature) == ("greedy", 1, (1,), 0.0)

    c = load("eval", "")  # the explicit key comes first on the command line and still wins over the preset
    assert (
        config_lib.apply_overrides(c, ["eval.temperature=0.5", "eval.protocol=codecontests"], rc.FREE_FORM, rc.PRESETS)
        == []
    )
    e = rc.parse(c).eval
    assert (e.protocol, e.n_samples, e.k, e.top_p, e.max_new_tokens) == ("codecontests", 10, (1, 5), 0.95, 1024)
    assert e.temperature == 0.5 and deviations(e) == {"temperature": 0.5} and temperatures(e) == {0.5: (1, 5)}
    assert PROTOCOLS["codecontests"]["temperature"] == 0.2
    found = config_lib.apply_overrides(load("eval"), ["eval.protocol=humaneval_plus"], rc.FREE_FORM, rc.PRESETS)
    assert found == ["eval.protocol='humaneval_plus': expected one of ['greedy', 'mtp_paper', 'codecontests']"]
    bad = load("eval")
    config_lib.apply_overrides(bad, ["eval.k_temperatures=(0.2,)", "eval.k=(1, 2)", "eval.n_samples=2"])
    assert "eval.k_temperatures=(0.2,): expected () or one non-negative temperature per eval.k=(1, 2)" in "\n".join(
        jobs.problems(bad, n_devices=4)
    )


def test_the_trainer_takes_only_declared_hooks():
    from wmtp_jax.train.trainer import Hook, Trainer

    class Printer:
        def on_step(self, trainer, event):
            pass

    trainer = Trainer.__new__(Trainer)
    trainer.hooks = []
    with pytest.raises(TypeError, match="Printer is not a wmtp_jax.train.trainer.Hook"):
        trainer.add_hook(Printer())
    trainer.add_hook(Hook(), every=3)
    assert trainer.hooks[0].every == 3
