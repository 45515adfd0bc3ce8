"""HTML reports: one per subject (``OUTPUT_DIR/sub-X.html``) and one for the group.

Both are rendered from jinja2 templates shipped in ``pipeline/reports/templates/`` with inline
CSS and JavaScript (no network needed to view them); figures are PNG files beside the HTML.
"""

from pipeline.reports.group import build_group_report
from pipeline.reports.subject import build_subject_report

__all__ = ["build_group_report", "build_subject_report"]
