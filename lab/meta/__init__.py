"""Meta-training: truncated unrolls, gradient estimators, the outer loop, checkpoints, evaluation."""
