"""tests/conftest.py: tests marked `cuda` are skipped (visibly) without a GPU; nothing else is,
whatever its parameters are called."""
import conftest
import pytest


class _Item:
    def __init__(self, keywords, marker):
        self.keywords = dict.fromkeys(keywords, 1)
        self.marker = marker
        self.added = []

    def get_closest_marker(self, name):
        return self.marker if name == 'cuda' else None

    def add_marker(self, mark):
        self.added.append(mark)


@pytest.mark.parametrize('has_cuda', [False, True])
def test_only_the_cuda_marker_skips(has_cuda, monkeypatch):
    monkeypatch.setattr(conftest, 'HAS_CUDA', has_cuda)
    marked = _Item(['test_x', 'cuda'], pytest.mark.cuda.mark)
    named_cuda = _Item(['test_y[cuda]', 'cuda'], None)  # a parametrize id, no marker
    plain = _Item(['test_z'], None)
    conftest.pytest_collection_modifyitems(None, [marked, named_cuda, plain])
    assert marked.added == ([] if has_cuda else [conftest.requires_cuda])
    assert named_cuda.added == [] and plain.added == []


@pytest.mark.parametrize('where', ['cuda'])
def test_a_cpu_test_with_a_parameter_named_cuda_runs(where, request):
    assert where == 'cuda' and request.node.get_closest_marker('cuda') is None
