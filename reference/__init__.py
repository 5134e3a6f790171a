"""NumPy/CuPy reference of the diffusion mathematics behind DifNet.

Plain array code, written once for NumPy and run unchanged on CuPy arrays: transition
matrices, the closed form of the diffusion (Eq. 2), random walks (Eq. 3), DifNet's cascade
(Eqs. 4-5), and `check_variant` to verify other implementations against them.
"""

from reference.probes import ProbeResult
from reference.solvers import attainable_residual, closed_form, closed_form_laplacian
from reference.transition import transition_matrix
from reference.variants import TrialResult, VariantMismatch, VariantReport, check_variant
from reference.walks import cascade, random_walk, walk_error_bound

__all__ = [
    "ProbeResult",
    "TrialResult",
    "VariantMismatch",
    "VariantReport",
    "attainable_residual",
    "cascade",
    "check_variant",
    "closed_form",
    "closed_form_laplacian",
    "random_walk",
    "transition_matrix",
    "walk_error_bound",
]
