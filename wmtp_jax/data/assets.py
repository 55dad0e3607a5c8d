"""Paths of the data shipped inside the package (see ``wmtp_jax/assets/README.md`` for sources and licences)."""

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
TOKENIZER = ASSETS_DIR / "tokenizer" / "llama_tokenizer.model"
MBPP = ASSETS_DIR / "mbpp" / "mbpp.jsonl"
MBPP_SANITIZED = ASSETS_DIR / "mbpp" / "sanitized-mbpp.json"
HUMANEVAL = ASSETS_DIR / "humaneval" / "HumanEval.jsonl.gz"
HUMANEVAL_PLUS = ASSETS_DIR / "evalplus" / "HumanEvalPlus-v0.1.10.jsonl.gz"
MBPP_PLUS = ASSETS_DIR / "evalplus" / "MbppPlus-v0.2.0.jsonl.gz"
CODECONTESTS_SAMPLE = ASSETS_DIR / "codecontests" / "code_contests_sample_train_short.jsonl"
MICRO_LABELLED = ASSETS_DIR / "micro" / "mbpp_train_labelled.jsonl"
MICRO_LABELLED_VALIDATION = ASSETS_DIR / "micro" / "mbpp_validation_labelled.jsonl"
