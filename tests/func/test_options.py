"""FuncOptions: documented defaults and strict validation."""

from __future__ import annotations

import pydantic
import pytest

from pipeline.func.options import FuncOptions


def test_every_option_documented():
    for name, field in FuncOptions.model_fields.items():
        assert field.description, name


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"label_atlases": {"bad-label": "x.nii.gz"}}, "letters and digits only"),
        ({"alff_band": (0.1, 0.01)}, "low < high"),
        ({"denoise_strategies": ["filt_magic"]}, "filt_global"),
        ({"connectivity": ["tangent"]}, "partial correlation"),
        ({"unknown": 1}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_options(kwargs, match):
    with pytest.raises(pydantic.ValidationError, match=match):
        FuncOptions(**kwargs)
