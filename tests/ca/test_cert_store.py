"""Certificates kept across a proxy's restart (issue 18, defect 6): a restarted SecretManager serves
an identity's stored certificate while the CA is away, and refuses what does not check out."""

from __future__ import annotations

import datetime as dt
import json
import stat

import pytest
import trio

from ca.authority import SigningAuthority
from ca.cert_store import CertificateStore
from ca.secrets import SecretManager
from tests.ca.test_secrets import DB, NO_JITTER, WEB, InMemoryCa


@pytest.fixture
def store_dir(tmp_path):
    return tmp_path / "secrets"


@pytest.fixture
def ca(authority: SigningAuthority) -> InMemoryCa:
    return InMemoryCa(authority)


def store_of(authority: SigningAuthority, directory) -> CertificateStore:
    return CertificateStore(directory, authority.root_pem.encode())


async def serve_once(ca: InMemoryCa, store: CertificateStore, *identities) -> dict:
    """A manager's lifetime: get each identity, then stop (the process ends)."""
    async with trio.open_nursery() as nursery:
        manager = SecretManager(ca.fetch, backoff=NO_JITTER, store=store)
        await nursery.start(manager.run)
        got = {identity: await manager.get(identity) for identity in identities}
        nursery.cancel_scope.cancel()
    return got


async def test_a_restarted_manager_serves_the_stored_certificate_while_the_ca_is_away(
        autojump_clock, authority, ca, store_dir):
    before = await serve_once(ca, store_of(authority, store_dir), WEB)
    files = list(store_dir.iterdir())
    assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(store_dir.stat().st_mode) == 0o700

    ca.outage = True  # the control plane (and its CA) is away; the proxy restarts
    async with trio.open_nursery() as nursery:
        manager = SecretManager(ca.fetch, backoff=NO_JITTER, store=store_of(authority, store_dir))
        await nursery.start(manager.run)
        with trio.fail_after(1):
            cert = await manager.get(WEB)
        assert cert.key_pem == before[WEB].key_pem and cert.chain_pem == before[WEB].chain_pem
        ca.outage = False  # the CA returns: a fresh certificate replaces the stored one
        await trio.sleep(60)
        assert manager.current(WEB).key_pem != before[WEB].key_pem
        nursery.cancel_scope.cancel()


def _tamper(store_dir, change) -> None:
    (path,) = list(store_dir.iterdir())
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


async def test_a_stored_certificate_from_another_mesh_is_not_used(autojump_clock, authority, ca, store_dir):
    await serve_once(ca, store_of(authority, store_dir), WEB)
    other = SigningAuthority.self_signed("cluster.local")  # same trust domain, another root
    foreign = await serve_once(InMemoryCa(other), store_of(other, store_dir.parent / "other"), WEB)
    _tamper(store_dir, lambda d: d.update(key_pem=foreign[WEB].key_pem.decode(),
                                           chain_pem=list(foreign[WEB].chain_pem)))
    assert store_of(authority, store_dir).load(WEB) is None
    assert list(store_dir.iterdir()) == []  # and it is removed


@pytest.mark.parametrize("change", [
    lambda d: d.update(identity="spiffe://cluster.local/ns/shop/sa/db"),  # claims another identity
    lambda d: d.update(key_pem=d["key_pem"].replace("A", "B", 5)),  # a damaged key
    lambda d: d.update(chain_pem=d["chain_pem"][1:]),  # the leaf left out
    lambda d: d.pop("chain_pem"),
], ids=["other-identity", "damaged-key", "no-leaf", "no-chain"])
async def test_a_damaged_stored_certificate_is_not_used(autojump_clock, authority, ca, store_dir, change):
    await serve_once(ca, store_of(authority, store_dir), WEB)
    _tamper(store_dir, change)
    assert store_of(authority, store_dir).load(WEB) is None


async def test_an_expired_stored_certificate_is_not_used(autojump_clock, authority, ca, store_dir):
    got = await serve_once(ca, store_of(authority, store_dir), WEB)
    store = store_of(authority, store_dir)
    assert store.load(WEB, now=got[WEB].not_after - dt.timedelta(seconds=1)) is not None
    assert store.load(WEB, now=got[WEB].not_after) is None
    assert list(store_dir.iterdir()) == []  # and it is removed


async def test_forgetting_an_identity_removes_its_key(autojump_clock, authority, ca, store_dir):
    async with trio.open_nursery() as nursery:
        manager = SecretManager(ca.fetch, backoff=NO_JITTER, store=store_of(authority, store_dir))
        await nursery.start(manager.run)
        await manager.get(WEB)
        await manager.get(DB)
        assert len(list(store_dir.iterdir())) == 2
        manager.forget(DB)
        assert len(list(store_dir.iterdir())) == 1
        nursery.cancel_scope.cancel()


def test_a_store_directory_others_can_read_is_refused(authority, tmp_path):
    wide = tmp_path / "wide"
    wide.mkdir()
    wide.chmod(0o755)
    with pytest.raises(OSError, match="0700"):
        store_of(authority, wide)
