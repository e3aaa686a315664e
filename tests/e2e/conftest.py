"""The ``make_lab`` fixture: labs that are taken down after the test, also when it fails."""

from __future__ import annotations

import shutil
import uuid

import pytest

from tests.e2e.lab_driver import SAMPLES, Lab


@pytest.fixture
def make_lab(tmp_path):
    labs: list[Lab] = []

    def make(documents: list[str], suffix: str = "") -> Lab:
        name = f"t{uuid.uuid4().hex[:6]}{suffix}"
        config = tmp_path / name / "config"
        config.mkdir(parents=True)
        shutil.copy(SAMPLES / "echo_server.py", config)
        (config / "apps.yaml").write_text("---".join(documents))
        lab = Lab(name, config, tmp_path / name / "state")
        labs.append(lab)
        return lab

    yield make
    for lab in labs:  # also after a failure: nothing may outlive the test
        lab.run("lab", "down", "--name", lab.name, check=False)
