"""Studies: train the arms, evaluate them on the same problems, and compare them with paired statistics."""
