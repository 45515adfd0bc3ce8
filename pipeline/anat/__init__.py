"""symprep.anat."""
