"""symprep.anat: pose-invariant registration of T1w images to MNI152NLin2009aSym.

Library code (no Nipype): header sanitising (:mod:`.header`), N4 (:mod:`.bias`), the pose search
over SO(3) (:mod:`.pose`), checked rigid → affine → SyN registration (:mod:`.registration`), brain
mask and tissue maps (:mod:`.segment`), registration QC (:mod:`.qc`) and posed test images with
known ground truth (:mod:`.synthetic`). :mod:`pipeline.workflows.anat` wraps them as a Nipype
workflow.
"""

from pipeline.anat.options import AnatOptions

__all__ = ["AnatOptions"]
