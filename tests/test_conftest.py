"""tests/conftest.py: tests marked `cuda` are deselected (and counted) without a GPU; nothing
else is, whatever its parameters are called; the longest test files come first; the Triton
interpreter's faster language patching patches what Triton's own does."""
import conftest
import pytest


class _Item:
    def __init__(self, keywords, marker, nodeid='tests/test_x.py::test_x'):
        self.nodeid = nodeid
        self.keywords = dict.fromkeys(keywords, 1)
        self.marker = marker

    def get_closest_marker(self, name):
        return self.marker if name == 'cuda' else None


class _Config:
    def __init__(self):
        self.deselected = []
        self.hook = self

    def pytest_deselected(self, items):
        self.deselected += items


@pytest.mark.parametrize('has_cuda', [False, True])
def test_only_the_cuda_marker_deselects(has_cuda, monkeypatch):
    monkeypatch.setattr(conftest, 'HAS_CUDA', has_cuda)
    marked = _Item(['test_x', 'cuda'], pytest.mark.cuda.mark)
    named_cuda = _Item(['test_y[cuda]', 'cuda'], None)  # a parametrize id, no marker
    plain = _Item(['test_z'], None)
    items, config = [marked, named_cuda, plain], _Config()
    conftest.pytest_collection_modifyitems(config, items)
    assert items == ([marked, named_cuda, plain] if has_cuda else [named_cuda, plain])
    assert config.deselected == ([] if has_cuda else [marked])


@pytest.mark.parametrize('where', ['cuda'])
def test_a_cpu_test_with_a_parameter_named_cuda_runs(where, request):
    assert where == 'cuda' and request.node.get_closest_marker('cuda') is None


def test_longest_files_first_each_keeping_its_order():
    names = ['tests/test_a.py::t1', 'tests/test_tools.py::t1', 'tests/test_a.py::t2',
             'tests/parity/test_run.py::t1', 'tests/test_tools.py::t2']
    items = [_Item([], None, n) for n in names]
    conftest.pytest_collection_modifyitems(_Config(), items)
    assert [i.nodeid for i in items] == [
        'tests/test_tools.py::t1', 'tests/test_tools.py::t2', 'tests/parity/test_run.py::t1',
        'tests/test_a.py::t1', 'tests/test_a.py::t2']


@pytest.mark.skipif(not conftest.INTERPRETER, reason='the Triton interpreter is not in use here')
def test_interpreter_patches_the_same_builtins_as_triton():
    """Each namespace listed once: a launch patches the same attributes, in the same order, as
    Triton's own `_patch_builtin`; inside a launch (a @triton.jit helper's call), neither patches
    anything more."""
    from triton.runtime import interpreter

    ours = interpreter._patch_builtin
    assert getattr(ours, 'original', None) is not None  # the listing is in place
    builder = interpreter.interpreter_builder
    for pkg in ours.names:
        changes = {}
        for fn in (ours.original, ours):
            scope = interpreter._LangPatchScope()
            fn(pkg, builder, scope)
            changes[fn] = [(id(obj), name) for obj, name, _ in scope._changes]
            nested = interpreter._LangPatchScope()
            fn(pkg, builder, nested)
            assert not nested._changes, pkg
            scope.restore()
        assert changes[ours] and changes[ours] == changes[ours.original], pkg


@pytest.mark.skipif(not conftest.INTERPRETER, reason='the Triton interpreter is not in use here')
def test_interpreter_patches_the_language_once_a_launch():
    """A launch patches triton.language as Triton does; a helper called inside it finds its
    namespaces patched and adds nothing (Triton's own call would set the same patches again)."""
    import triton.language as tl
    from triton.runtime import interpreter

    from mmdet_focal_triton.kernels import flat

    ours = interpreter._patch_lang
    assert getattr(ours, 'original', None) is not None  # the shortcut is in place
    fn = flat.flat_loss_kernel.fn
    launch = ours(fn)  # outside a launch: Triton's own patching
    try:
        assert launch._changes
        assert not tl.core.is_builtin(tl.load) and not tl.core.is_builtin(tl.where)
        assert not ours(fn)._changes  # inside it: nothing more
    finally:
        launch.restore()
    assert tl.core.is_builtin(tl.load)  # undone with the launch
    again = ours(fn)
    assert again._changes  # and the next launch patches again
    again.restore()
