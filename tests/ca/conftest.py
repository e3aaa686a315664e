from __future__ import annotations

import pytest

from ca.authority import SigningAuthority
from mesh.identity import SpiffeId


@pytest.fixture(scope="session")
def authority() -> SigningAuthority:
    return SigningAuthority.self_signed("cluster.local")


@pytest.fixture
def identity() -> SpiffeId:
    return SpiffeId("cluster.local", "default", "client")
