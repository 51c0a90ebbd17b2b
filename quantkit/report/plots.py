"""matplotlib, headless, for the plots of validation.html (quantkit.report.html and the checks' own plots)."""

from __future__ import annotations

import base64
import io


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display; the figures are rendered to PNG
    import matplotlib.pyplot as plt

    return plt


def outside_legend(ax, **kw) -> None:
    """The legend beside the plot, never over its bars and lines (bbox_inches="tight" keeps it in the PNG)."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kw)


def png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
