"""symprep.func."""
