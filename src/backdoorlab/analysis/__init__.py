"""Analysis tools: trigger sensitivity (Li et al. Figs. 4–5) and saliency maps (Fig. 10)."""

from backdoorlab.analysis.saliency import plot_saliency_grid, saliency, saliency_rows
from backdoorlab.analysis.sensitivity import (
    Heatmap,
    plot_heatmap,
    plot_value_sweep,
    position_heatmap,
    value_sweep,
)

__all__ = [
    "Heatmap",
    "plot_heatmap",
    "plot_saliency_grid",
    "plot_value_sweep",
    "position_heatmap",
    "saliency",
    "saliency_rows",
    "value_sweep",
]
