"""Data: shipped assets, tokenizer, Alpaca records and index, sampling, Grain pipeline."""
