"""The derivative sinks: the only Nipype nodes that write into the output dataset.

Every name comes from the declaration in :mod:`pipeline.outputs` (a stage, an output key, the
source file's entities and the output's variable entities), so a sink cannot invent a path that
the expected-path checks, reports and group readers would not find. Writes are atomic
(:func:`pipeline.io.atomic_path`); uncompressed work-directory images are written as ``.nii.gz``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from pipeline.io import atomic_path, save_image, write_json


class _SinkInputSpec(BaseInterfaceInputSpec):
    base_directory = traits.Str(mandatory=True, desc="root of the derivatives dataset")
    stage = traits.Str(mandatory=True, desc="stage whose declared outputs hold `output`")
    output = traits.Str(mandatory=True, desc="key of the declared output")
    source = traits.Dict(mandatory=True, desc="BIDS entities of the source file (sub, ses, run …)")
    values = traits.Dict(desc="the output's variable entities (atlas, meas, desc)")
    res = traits.Either(traits.Int, traits.Float, traits.Str, desc="res label of std outputs")
    space = traits.Str(desc="template of std outputs (default: the shipped one)")
    in_file = File(exists=True, mandatory=True)
    meta_dict = traits.Dict(desc="JSON sidecar content (none is written for .json outputs)")
    meta_file = File(exists=True, desc="JSON whose content is merged into the sidecar")


class _SinkOutputSpec(TraitedSpec):
    out_file = File(exists=True)
    out_meta = File(desc="the JSON sidecar")


def sink_file(
    *,
    base_directory: str,
    stage: str,
    output: str,
    source: dict,
    in_file: str,
    values: dict | None = None,
    res=None,
    space: str | None = None,
    meta: dict | None = None,
) -> tuple[Path, Path | None]:
    """Write ``in_file`` as the declared output ``stage.output`` of ``source``, with its sidecar.

    Returns the destination and the sidecar (None for ``.json`` outputs).
    """
    from pipeline.outputs import STAGE_OUTPUTS, TEMPLATE, output_path

    spec = STAGE_OUTPUTS[stage][output]
    dest = output_path(
        spec, base_directory, source, res=res, space=space or TEMPLATE, **(values or {})
    )
    if in_file.endswith(".nii") and spec.extension == ".nii.gz":
        save_image(nib.load(in_file), dest)
    else:
        with atomic_path(dest) as tmp:
            shutil.copyfile(in_file, tmp)
    if spec.extension == ".json":
        return dest, None
    sidecar = {"Description": spec.description, **(meta or {})}
    side = dest.with_name(dest.name[: -len(spec.extension)] + ".json")
    return dest, write_json(side, sidecar)


class DerivativesDataSink(SimpleInterface):
    """Copy one result into the derivatives dataset under its declared BIDS name, with a sidecar."""

    input_spec = _SinkInputSpec
    output_spec = _SinkOutputSpec
    _always_run = True  # a cached sink would not rewrite a deleted output

    def _run_interface(self, runtime):
        meta = dict(self.inputs.meta_dict) if isdefined(self.inputs.meta_dict) else {}
        if isdefined(self.inputs.meta_file):
            meta.update(json.loads(Path(self.inputs.meta_file).read_text()))
        dest, side = sink_file(
            base_directory=self.inputs.base_directory,
            stage=self.inputs.stage,
            output=self.inputs.output,
            source=dict(self.inputs.source),
            in_file=self.inputs.in_file,
            values=dict(self.inputs.values) if isdefined(self.inputs.values) else None,
            res=self.inputs.res if isdefined(self.inputs.res) else None,
            space=self.inputs.space if isdefined(self.inputs.space) else None,
            meta=meta,
        )
        self._results["out_file"] = str(dest)
        if side is not None:
            self._results["out_meta"] = str(side)
        return runtime


class _SinkManyInputSpec(BaseInterfaceInputSpec):
    base_directory = traits.Str(mandatory=True, desc="root of the derivatives dataset")
    stage = traits.Str(mandatory=True)
    source = traits.Dict(mandatory=True, desc="BIDS entities of the source file")
    in_files = traits.List(File(exists=True), mandatory=True)
    outputs = traits.List(traits.Dict, mandatory=True, desc="{'output': key, **values} per file")
    space = traits.Str(desc="template of the outputs' space entities (default: the shipped one)")
    meta_dict = traits.Dict(desc="JSON sidecar content (the same for every file)")


class _SinkManyOutputSpec(TraitedSpec):
    out_files = traits.List(File(exists=True))


class DerivativesDataSinkMany(SimpleInterface):
    """:class:`DerivativesDataSink` for a list of small outputs in one node.

    The atlas × strategy × measure outputs number in the hundreds; one Nipype node each would cost
    more in bookkeeping than the writing itself.
    """

    input_spec = _SinkManyInputSpec
    output_spec = _SinkManyOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        if len(self.inputs.in_files) != len(self.inputs.outputs):
            raise ValueError(
                f"{len(self.inputs.in_files)} files but {len(self.inputs.outputs)} output names"
            )
        meta = dict(self.inputs.meta_dict) if isdefined(self.inputs.meta_dict) else {}
        out = []
        for in_file, named in zip(self.inputs.in_files, self.inputs.outputs, strict=True):
            values = dict(named)
            key = values.pop("output")
            dest, _ = sink_file(
                base_directory=self.inputs.base_directory,
                stage=self.inputs.stage,
                output=key,
                source=dict(self.inputs.source),
                in_file=in_file,
                values=values,
                space=self.inputs.space if isdefined(self.inputs.space) else None,
                meta=meta,
            )
            out.append(str(dest))
        self._results["out_files"] = out
        return runtime
