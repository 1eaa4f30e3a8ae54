"""In-context mesa-optimizers: sequence models meta-trained on regression tasks that fit each new task from the
examples in their context (von Oswald et al. 2022, "Transformers learn in-context by gradient descent").

The task family itself (``ICLFamily``: tasks, shifts, candidate inner objectives) is ``lab.families.incontext``.

- ``references``: closed-form reference learners (GD, GD++, least squares, ridge, pool posteriors) and their
  optimal parameters.
- ``models``: linear self-attention (single, multi-layer, looped) and softmax attention, in Flax NNX; the
  hand-constructed GD / GD++ weights.
- ``train``: meta-training with optax Adam, tasks as the batch.
"""

from lab.families.incontext import ICLFamily, ridge, ridge_name, tokens
from lab.incontext.models import ModelSpec, apply, build, gd_lsa, stream
from lab.incontext.references import Reference, gd1_optimum, gd_optimum, gdpp_optimum, reference_set
from lab.incontext.train import InContextConfig, TrainConfig, load_learner, predictions, query_loss, train_run

__all__ = ["ICLFamily", "ModelSpec", "Reference", "TrainConfig", "apply", "build", "gd1_optimum", "gd_lsa",
           "gd_optimum", "gdpp_optimum", "InContextConfig", "load_learner", "train_run", "predictions", "query_loss", "reference_set", "ridge", "ridge_name", "stream",
           "tokens"]
