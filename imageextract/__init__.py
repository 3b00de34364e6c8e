"""imageextract: particle statistics from electron micrographs.

Public API::

    load_image(path)                         -> ndarray
    calibrate(image, nm_per_px=...)          -> Calibration | None
    segment(image, backend="classical")      -> Segmentation
    measure(labels, nm_per_px=...)           -> DataFrame (one row per particle)
    summarize(table)                         -> dict (D10/D50/D90, lognormal fit, CIs)
    radial_distribution(centroids, area=...) -> DataFrame (r, g)
    split_panels(figure)                     -> list[Panel] (compound figures)
    read_scale_bar(image)                    -> Calibration | None
    analyze(paths, out_dir, ...)             -> AnalyzeResult (the whole local pipeline)
    mine(dois=[...], source="europepmc", out_dir=...) -> MineResult (the literature path)
    load_particles(out_dir)                  -> DataFrame of a results folder
"""

__version__ = "0.1.0"

from .analysis.distributions import summarize
from .analysis.rdf import radial_distribution
from .analysis.sizes import measure
from .calibration import calibrate
from .figures import read_scale_bar, split_panels
from .io import load_image
from .mining import mine
from .pipeline import analyze
from .segment import available_backends, segment
from .types import Calibration, Micrograph, Segmentation


def load_particles(out_dir):
    """Particle table of a results folder (reads ``particles.parquet``)."""
    import pandas as pd
    from pathlib import Path

    return pd.read_parquet(Path(out_dir) / "particles.parquet")


__all__ = [
    "__version__", "analyze", "available_backends", "calibrate", "load_image", "load_particles",
    "measure", "mine", "radial_distribution", "read_scale_bar", "segment", "split_panels",
    "summarize",
    "Calibration", "Micrograph", "Segmentation",
]
