"""The CA directory: a self-signed root or a plug-in CA, and every broken plug-in named."""

import stat
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ca import store
from ca.client import new_key_and_csr
from tests.ca.pki import ca_cert, key_pem, pem, write_plugin_ca

DAY = __import__("datetime").timedelta(hours=24)


def test_init_self_signed_writes_istio_layout(tmp_path, identity):
    ca_dir = tmp_path / "ca"
    created = store.init_self_signed(ca_dir, "cluster.local")
    assert stat.S_IMODE((ca_dir / "ca-key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE(ca_dir.stat().st_mode) == 0o700
    root = created.root
    assert root.public_key().curve.name == "secp256r1"
    assert (root.not_valid_after_utc - root.not_valid_before_utc).days >= 3650
    loaded = store.load(ca_dir)
    assert loaded.trust_domain == "cluster.local" and loaded.chain == created.chain


def test_init_refuses_to_replace_a_ca(tmp_path):
    store.init_self_signed(tmp_path, "cluster.local")
    with pytest.raises(store.CaStoreError, match="a CA already exists"):
        store.init_self_signed(tmp_path, "cluster.local")


def test_load_names_the_missing_ca(tmp_path):
    with pytest.raises(store.CaStoreError, match="no CA here"):
        store.load(tmp_path)


def test_plugin_ca_signs_with_intermediate(tmp_path, identity):
    root, inter = write_plugin_ca(tmp_path / "plugin")
    authority = store.import_plugin(tmp_path / "ca", tmp_path / "plugin", "cluster.local")
    assert authority.chain == (inter, root)
    leaf, chain = store.load(tmp_path / "ca").issue(new_key_and_csr(identity)[1], identity, DAY)
    assert len(chain) == 3 and chain[1] == pem(inter).decode() and chain[2] == pem(root).decode()
    (tmp_path / "leaf.pem").write_text(chain[0])
    (tmp_path / "inter.pem").write_text(chain[1])
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", tmp_path / "plugin" / "root-cert.pem", "-untrusted", tmp_path / "inter.pem",
         tmp_path / "leaf.pem"], capture_output=True, text=True,
    )
    assert verify.returncode == 0, verify.stderr


def test_plugin_chain_without_root_is_accepted(tmp_path):
    root, inter = write_plugin_ca(tmp_path / "plugin")
    (tmp_path / "plugin" / "cert-chain.pem").write_bytes(pem(inter))
    assert store.import_plugin(tmp_path / "ca", tmp_path / "plugin", "cluster.local").chain == (inter, root)


def _break_key(plugin):
    (plugin / "ca-key.pem").write_bytes(key_pem(ec.generate_private_key(ec.SECP256R1())))


def _not_a_ca(plugin):
    key = ec.generate_private_key(ec.SECP256R1())
    (plugin / "ca-cert.pem").write_bytes(pem(ca_cert("leafish", key, ca=False)))
    (plugin / "ca-key.pem").write_bytes(key_pem(key))


def _wrong_root(plugin):
    other_root = ca_cert("Another Root", ec.generate_private_key(ec.SECP256R1()))
    (plugin / "root-cert.pem").write_bytes(pem(other_root))
    (plugin / "cert-chain.pem").write_bytes(pem(x509_load(plugin / "ca-cert.pem")))


def x509_load(path):
    from cryptography import x509
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.mark.parametrize(
    "damage, message",
    [
        (_break_key, "does not match the signing certificate"),
        (_not_a_ca, "is not a CA certificate"),
        (_wrong_root, "is not signed by 'CN=Another Root'"),
        (lambda p: (p / "root-cert.pem").unlink(), "root-cert.pem: file not found"),
        (lambda p: (p / "ca-key.pem").write_text("garbage"), "ca-key.pem: not an unencrypted PEM private key"),
        (lambda p: (p / "ca-cert.pem").write_text("garbage"), "ca-cert.pem: not PEM certificates"),
    ],
)
def test_broken_plugin_ca_is_named(tmp_path, damage, message):
    write_plugin_ca(tmp_path / "plugin")
    damage(tmp_path / "plugin")
    with pytest.raises(store.CaStoreError, match=message):
        store.import_plugin(tmp_path / "ca", tmp_path / "plugin", "cluster.local")
    assert not (tmp_path / "ca" / "ca-key.pem").exists()
