import pytest
from hypothesis import given, strategies as st

from mesh.identity import InvalidSpiffeId, SpiffeId


def test_round_trip():
    text = "spiffe://cluster.local/ns/default/sa/client"
    parsed = SpiffeId.parse(text)
    assert parsed == SpiffeId("cluster.local", "default", "client")
    assert str(parsed) == text


@pytest.mark.parametrize(
    "text, complaint",
    [
        ("http://cluster.local/ns/a/sa/b", "does not start with"),
        ("spiffe://cluster.local/ns/a", "is not of the form"),
        ("spiffe://cluster.local/ns/a/sa/b/extra", "is not of the form"),
        ("spiffe://cluster.local/sa/a/ns/b", "is not of the form"),
        ("spiffe://Cluster.Local/ns/a/sa/b", "trust domain"),
        ("spiffe:///ns/a/sa/b", "trust domain"),
        ("spiffe://cluster.local/ns/A_B/sa/b", "namespace"),
        ("spiffe://cluster.local/ns/a/sa/", "service account"),
    ],
)
def test_rejects_with_reason(text, complaint):
    with pytest.raises(InvalidSpiffeId, match=complaint):
        SpiffeId.parse(text)


@given(st.text())
def test_parse_never_raises_anything_else(text):
    try:
        assert str(SpiffeId.parse(text)) == text
    except InvalidSpiffeId:
        pass
