"""Numbers to pages: tables, figures, the self-contained report.html and the published reference numbers."""

from . import published
from .figures import colorize, overlay, plot_curves, save_rgb
from .html import html_table, write_report
from .tables import METRIC_COLUMNS, markdown_table, with_means, write_table

__all__ = [
    "METRIC_COLUMNS",
    "colorize",
    "html_table",
    "markdown_table",
    "overlay",
    "plot_curves",
    "published",
    "save_rgb",
    "with_means",
    "write_report",
    "write_table",
]
