"""The public surface is ``taskpipe.__all__``: sorted, importable, documented."""

import inspect
import types

import taskpipe


def test_all_is_sorted_and_importable():
    assert list(taskpipe.__all__) == sorted(taskpipe.__all__)
    for name in taskpipe.__all__:
        assert hasattr(taskpipe, name), name


def test_every_public_class_and_function_exported_is_documented():
    undocumented = [
        name
        for name in taskpipe.__all__
        if not isinstance(getattr(taskpipe, name), types.ModuleType)
        and not inspect.getdoc(getattr(taskpipe, name))
    ]
    assert undocumented == []


def test_nothing_public_is_left_out_of_all():
    submodules = {
        name for name, value in vars(taskpipe).items() if isinstance(value, types.ModuleType)
    }
    public = {name for name in vars(taskpipe) if not name.startswith("_")} - submodules
    assert public - set(taskpipe.__all__) == set()
