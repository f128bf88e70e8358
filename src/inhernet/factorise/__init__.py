"""Factorising one layer: the truncated SVD (:mod:`.svd`), activation statistics for the whitened
SVD (:mod:`.whitening`), the registered initialisations (:mod:`.inits`) and head
initialisations (:mod:`.heads`)."""

from . import heads, inits, svd, whitening
from .inits import Init
from .svd import singular_values, truncated_svd
from .whitening import GramAccumulator, cholesky_factor

__all__ = ["GramAccumulator", "Init", "cholesky_factor", "heads", "inits", "singular_values", "svd",
           "truncated_svd", "whitening"]
