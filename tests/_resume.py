"""Resuming a test run that was stopped: the cases a JUnit XML report (`--junitxml`) records as
passed, so that `tests/conftest.py` deselects them when `PYTEST_RESUME_JUNIT` names such reports
(os.pathsep-separated). The GPU grid's stages (`tests/gpu/run_all.sh grid-numbers | grid-rest`)
run under a time limit; pytest writes the report of what ran when the limit interrupts it
(SIGINT), and the next call carries it and runs only the rest.

A case counts as passed when its <testcase> element names it and holds no <failure>, <error> or
<skipped>: a case that failed, errored in set-up or teardown, was skipped, or was cut off by
the interrupt (a <testcase> without a name) runs again.
"""
import os
import re
import xml.etree.ElementTree as ET

NOT_PASSED = frozenset({'failure', 'error', 'skipped'})


def junit_address(nodeid: str) -> tuple[str, str]:
    """(classname, name) of a node id as pytest's junitxml writes them (its
    `mangle_test_address`): 'tests/a/test_b.py::TestC::test_d[x::y]' -> ('tests.a.test_b.TestC',
    'test_d[x::y]')."""
    path, bracket, params = nodeid.partition('[')
    names = path.split('::')
    names[0] = re.sub(r'\.py$', '', names[0].replace('/', '.'))
    names[-1] += bracket + params
    return '.'.join(names[:-1]), names[-1]


def passed_in(paths) -> set[tuple[str, str]]:
    """The (classname, name) of every case that passed in the JUnit XML reports at `paths`."""
    done = set()
    for path in paths:
        for case in ET.parse(path).iter('testcase'):
            classname, name = case.get('classname'), case.get('name')
            if classname and name and not any(child.tag in NOT_PASSED for child in case):
                done.add((classname, name))
    return done


def resume_paths(value: str | None) -> list[str]:
    """The report paths of a `PYTEST_RESUME_JUNIT` value (empty entries ignored)."""
    return [p for p in (value or '').split(os.pathsep) if p]
