"""How the suite is split over pytest-xdist workers (tests/conftest.py): a test that uses a
shared workflow run goes with every other user of that run, the rest go by file."""

from __future__ import annotations

from conftest import SHARED_RUN_FIXTURES, xdist_group_of


def test_users_of_a_shared_run_share_a_group_whatever_their_file() -> None:
    for fixture in SHARED_RUN_FIXTURES:
        groups = {
            xdist_group_of(["tmp_path", fixture], "tests/test_a.py::test_x"),
            xdist_group_of([fixture], "tests/test_b.py::test_y[param]"),
        }
        assert groups == {fixture}


def test_other_tests_are_grouped_by_file() -> None:
    assert xdist_group_of(["tmp_path"], "tests/test_a.py::test_x[1]") == "tests/test_a.py"
    assert xdist_group_of([], "tests/test_a.py::test_y") == "tests/test_a.py"
    assert xdist_group_of(["tmp_path"], "tests/test_b.py::test_x") == "tests/test_b.py"


def test_every_collected_test_carries_its_group(request) -> None:
    marks = [mark.args for mark in request.node.iter_markers("xdist_group")]
    assert marks == [("tests/test_worker_groups.py",)]
