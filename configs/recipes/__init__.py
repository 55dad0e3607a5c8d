"""The design documents' recipes: the training configs with the design's settings and sample budgets."""
