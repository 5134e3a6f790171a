"""Every walk of the library, in one package: the transition kernels and their products `P y`
(`kernels`), the walks with restart and the cascade, step by step or as a Chebyshev series
(`walks`), the learned walk on the image (`guided`), and the label statistics of the transition
rows that the transition loss and the diagnostics read (`label_statistics`)."""

from difnet.diffusion.guided import GuidedWalk, walk_grid
from difnet.diffusion.kernels import (
    PAPER_KERNEL,
    SIMILARITIES,
    WALK_METHODS,
    TransitionKernel,
    WalkMethod,
    flatten_nodes,
    full_precision,
    local_transition,
    propagate,
    transition_logits,
    transition_matrix,
    transition_rows,
    unflatten_nodes,
)
from difnet.diffusion.label_statistics import RowStatistics, label_propagate, node_labels, row_statistics
from difnet.diffusion.walks import (
    DEFAULT_SOLVER,
    SOLVERS,
    Cascade,
    RandomWalk,
    Transition,
    cascade_walk,
    chebyshev_degree,
    chebyshev_walk,
    restart_walk,
    walk_states,
    walk_step,
)

__all__ = [
    "DEFAULT_SOLVER",
    "PAPER_KERNEL",
    "SIMILARITIES",
    "SOLVERS",
    "WALK_METHODS",
    "Cascade",
    "GuidedWalk",
    "RandomWalk",
    "RowStatistics",
    "Transition",
    "TransitionKernel",
    "WalkMethod",
    "cascade_walk",
    "chebyshev_degree",
    "chebyshev_walk",
    "flatten_nodes",
    "full_precision",
    "label_propagate",
    "local_transition",
    "node_labels",
    "propagate",
    "restart_walk",
    "row_statistics",
    "transition_logits",
    "transition_matrix",
    "transition_rows",
    "unflatten_nodes",
    "walk_grid",
    "walk_states",
    "walk_step",
]
