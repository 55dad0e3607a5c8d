"""Training: the jitted train step (step.py) and the loop around it (loop.py)."""
