"""symprep: neuroimaging preprocessing whose steps are invariance steps."""

__version__ = "0.1.0"
