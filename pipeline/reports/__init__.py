"""symprep.reports."""
