"""tests/conftest.py: tests marked `cuda` are deselected (and counted) without a GPU; nothing
else is, whatever its parameters are called; the cases a stopped run's JUnit report records as
passed are deselected under PYTEST_RESUME_JUNIT (`_resume.py`); the longest test files come
first; the Triton interpreter's faster language patching patches what Triton's own does."""
import os
import subprocess
import sys
import textwrap

import _resume
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



# a run to resume: parameter ids with '.', '/' and '::', a class, and cases that pass, fail,
# are skipped and error in teardown; each case records its node id
_RUN = textwrap.dedent("""
    import pytest

    @pytest.fixture
    def broken_teardown():
        yield
        raise RuntimeError('teardown')

    @pytest.fixture(autouse=True)
    def record(request):
        yield
        with open('ids.txt', 'a') as f:
            f.write(request.node.nodeid + '\\n')

    @pytest.mark.parametrize('x', ['a.b', 'c/d', 'e::f', 1])
    def test_param(x):
        pass

    class TestGroup:
        def test_passes(self):
            pass

        def test_fails(self):
            assert False

    def test_skipped():
        pytest.skip('no')

    def test_teardown_error(broken_teardown):
        pass
""")
PASSED = ('test_param[a.b]', 'test_param[c/d]', 'test_param[e::f]', 'test_param[1]',
          'TestGroup::test_passes')


def test_resume_deselects_exactly_what_passed(tmp_path, monkeypatch):
    """pytest's own JUnit report of a run (a subprocess, outside this suite's configuration):
    `_resume` reads back the node ids of the cases that passed, and only those; the hook
    deselects them, and keeps the rest."""
    sub = tmp_path / 'sub'
    sub.mkdir()
    (sub / 'test_run.py').write_text(_RUN)
    env = {k: v for k, v in os.environ.items() if not k.startswith(('PYTEST', 'TRITON'))}
    proc = subprocess.run([sys.executable, '-m', 'pytest', 'sub/test_run.py', '-q', '-p',
                           'no:cacheprovider', '-p', 'no:xdist', '-p', 'no:randomly',
                           '--junitxml', 'report.xml'], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    # the teardown error's call passed: pytest counts it as passed and as an error
    assert '1 failed, 6 passed, 1 skipped, 1 error' in proc.stdout, proc.stdout[-2000:]
    ids = (tmp_path / 'ids.txt').read_text().split()
    assert len(ids) == 8  # every case, the skipped one included
    passed = {f'sub/test_run.py::{name}' for name in PASSED}
    assert passed <= set(ids)
    done = _resume.passed_in([str(tmp_path / 'report.xml')])
    assert done == {_resume.junit_address(i) for i in passed}

    monkeypatch.setenv('PYTEST_RESUME_JUNIT', os.pathsep + str(tmp_path / 'report.xml'))
    items = [_Item([], None, i) for i in ids]
    config = _Config()
    conftest.pytest_collection_modifyitems(config, items)
    assert sorted(i.nodeid for i in config.deselected) == sorted(passed)
    assert sorted(i.nodeid for i in items) == sorted(set(ids) - passed)


def test_junit_address_follows_pytest():
    assert _resume.junit_address('tests/a/test_b.py::TestC::test_d[x::y.z/w]') == (
        'tests.a.test_b.TestC', 'test_d[x::y.z/w]')
    assert _resume.junit_address('tests/test_b.py::test_d') == ('tests.test_b', 'test_d')
    assert _resume.resume_paths(None) == [] and _resume.resume_paths(
        os.pathsep.join(['a.xml', '', 'b.xml'])) == ['a.xml', 'b.xml']


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
