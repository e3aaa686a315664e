"""The client trusts nothing the CA returns until it has checked it."""

import datetime as dt

import pytest

from ca.authority import SigningAuthority
from ca.client import CertificateError, new_key_and_csr, verify_issued
from mesh.identity import SpiffeId

DAY = dt.timedelta(hours=24)


def issue(authority, identity, csr_identity=None):
    key, csr = new_key_and_csr(csr_identity or identity)
    _, chain = authority.issue(csr, identity, DAY)
    return key, chain


def test_accepts_a_good_chain(authority, identity):
    key, chain = issue(authority, identity)
    certified = verify_issued(chain, authority.root, identity, key)
    assert certified.identity == identity and certified.chain_pem == tuple(chain)
    assert b"PRIVATE KEY" in certified.key_pem
    assert "PRIVATE" not in repr(certified)  # keys never reach a log through repr


def test_rejects_a_chain_from_another_root(authority, identity):
    key, chain = issue(SigningAuthority.self_signed("cluster.local"), identity)
    with pytest.raises(CertificateError, match="not the mesh root"):
        verify_issued(chain, authority.root, identity, key)


def test_rejects_a_forged_root_at_the_end_of_the_chain(authority, identity):
    key, chain = issue(SigningAuthority.self_signed("cluster.local"), identity)
    with pytest.raises(CertificateError, match="does not verify"):
        verify_issued([chain[0], authority.root_pem], authority.root, identity, key)


def test_rejects_another_identity(authority, identity):
    other = SpiffeId("cluster.local", "default", "other")
    key, chain = issue(authority, other)
    with pytest.raises(CertificateError, match="not for the requested"):
        verify_issued(chain, authority.root, identity, key)


def test_rejects_a_certificate_for_another_key(authority, identity):
    _, chain = issue(authority, identity)
    key, _ = new_key_and_csr(identity)
    with pytest.raises(CertificateError, match="public key of our CSR"):
        verify_issued(chain, authority.root, identity, key)


@pytest.mark.parametrize("chain, message", [([], "returned 0"), (["junk", "junk"], "does not parse")])
def test_rejects_malformed_replies(authority, identity, chain, message):
    key, _ = new_key_and_csr(identity)
    with pytest.raises(CertificateError, match=message):
        verify_issued(chain, authority.root, identity, key)
