"""symprep.workflows."""
