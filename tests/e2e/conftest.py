"""The ``make_lab`` fixture: labs that are taken down after the test, also when it fails."""

from __future__ import annotations

import pytest

from tests.e2e.lab_driver import Lab, new_lab


@pytest.fixture
def make_lab(tmp_path):
    labs: list[Lab] = []

    def make(documents: list[str], suffix: str = "") -> Lab:
        lab = new_lab(tmp_path, documents, suffix)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:  # also after a failure: nothing may outlive the test
        lab.run("lab", "down", "--name", lab.name, check=False)
