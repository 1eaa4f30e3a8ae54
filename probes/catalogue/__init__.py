"""The probe catalogue: one module per family of probes. Importing this package registers every probe in
``probes.subject.PROBES``; a user's own probe module registers its probes the same way (``register_probe``).

- ``competence``: the competence gate against tuned Adam.
- ``inverse``: inverse optimisation (gradient regression, drift, fixed point, implied ridge).
- ``objective``: the recovered objective: named candidates plus an unnamed quadratic part, fitted to update
  directions and end points with the optimizer's momentum and preconditioner as nuisances.
- ``shifts``: decorrelation, affordances, the capability sweep and cue counterfactuals.
- ``field``: the curl of the update field.
- ``representation``: linear probes on named captures.
- ``incontext``: the in-context learner's probes (alignment with closed-form references, implied η / γ / λ,
  the fixed point, shifts against the best learner of its class, linear probes on the residual stream).
"""

from probes.catalogue import competence, field, incontext, inverse, objective, representation, shifts  # noqa: F401
from probes.catalogue import dynamics  # noqa: F401
