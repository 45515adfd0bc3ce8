"""symprep.data."""
