"""Torch single-threaded in these tests (the fixture lives in ``tests/_torch_threads.py``)."""

from _torch_threads import _one_torch_thread  # noqa: F401  (autouse fixture)
