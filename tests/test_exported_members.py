"""The package's public names are exactly ``__all__``, sorted (as httpx's tests/test_exported_members.py)."""

from __future__ import annotations

import inspect

import batchrun


def test_all_is_sorted_and_names_every_public_member() -> None:
    assert batchrun.__all__ == sorted(batchrun.__all__)
    public = {name for name in dir(batchrun) if not name.startswith("_")}
    members = {name for name in public if not inspect.ismodule(getattr(batchrun, name))}
    assert members | {"__version__"} == set(batchrun.__all__)
    for name in batchrun.__all__:
        assert getattr(batchrun, name) is not None


def test_the_api_names_are_the_modules_own() -> None:
    from batchrun import api, spec

    assert (batchrun.run, batchrun.arun, batchrun.Summary, batchrun.Job) == (api.run, api.arun, api.Summary, spec.Job)
