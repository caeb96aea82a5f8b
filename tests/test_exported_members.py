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


def test_the_errors_of_layers_and_routers_are_exported_with_the_others():
    from taskpipe.layers import TaskTimeout

    assert taskpipe.TaskTimeout is TaskTimeout is taskpipe.errors.TaskTimeout
    assert "TaskTimeout" in taskpipe.errors.__all__
    assert taskpipe.UnknownTask is taskpipe.errors.UnknownTask
    assert {"TaskTimeout", "UnknownTask"} <= set(taskpipe.__all__)


def test_taskpipe_layers_exports_the_classes_and_functions_of_its_modules():
    import importlib
    import pkgutil

    import taskpipe.layers as layers

    left_out, undocumented = [], []
    for info in pkgutil.iter_modules(layers.__path__):
        module = importlib.import_module(f"taskpipe.layers.{info.name}")
        for name in module.__all__:
            value = getattr(module, name)
            if not (inspect.isclass(value) or inspect.isfunction(value)):
                continue
            if getattr(layers, name, None) is not value or name not in layers.__all__:
                left_out.append(f"{info.name}.{name}")
            if not inspect.getdoc(value):
                undocumented.append(f"{info.name}.{name}")
    assert left_out == [] and undocumented == []
