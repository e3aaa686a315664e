"""Reading py-spy's flame graphs back: where the samples were spent."""

from __future__ import annotations

from datapath.profile import flame_name, record_argv, top_self


def frame(title: str, y: int, x: int, w: int, total: int = 10) -> str:
    # As py-spy (inferno) writes a frame; the root at the top, callees 16 px further down.
    return (f'<g><title>{title} ({w} samples, {100 * w / total:g}%)</title><rect x="{100 * x / total:.4f}%" '
            f'y="{y}" width="{100 * w / total:.4f}%" height="15" fill="rgb(227,0,7)" fg:x="{x}" fg:w="{w}"/>'
            f'<text x="0" y="{y + 10}"></text></g>')


SVG = "\n".join([
    '<svg version="1.1" xmlns="http://www.w3.org/2000/svg"><g id="frames">',
    frame("all", 52, 0, 10),
    frame("run (ztunnel/__main__.py:9)", 68, 0, 10),
    frame("TlsStream._try_send (ztunnel/tls_stream.py:120)", 84, 0, 6),
    frame("TlsStream._try_send (ztunnel/tls_stream.py:131)", 84, 6, 2),
    frame("SSLObject.write (ssl.py:930)", 100, 0, 3),
    frame("__init__ (&lt;attrs generated methods trio._core.EpollWaiters&gt;:19)", 100, 6, 1),
    "</g></svg>",
])


def test_top_self_counts_what_a_function_spent_itself():
    assert top_self(SVG) == [
        ("TlsStream._try_send (ztunnel/tls_stream.py)", 0.4),  # (6 - 3) + (2 - 1): both lines together
        ("SSLObject.write (ssl.py)", 0.3),
        ("run (ztunnel/__main__.py)", 0.2),  # 10 - 6 - 2
        ("__init__ (<attrs generated methods trio._core.EpollWaiters>)", 0.1),
    ]
    assert top_self(SVG, n=1) == [("TlsStream._try_send (ztunnel/tls_stream.py)", 0.4)]


def test_top_self_of_an_empty_graph():
    assert top_self("<svg></svg>") == []
    assert top_self(frame("all", 52, 0, 0)) == []


def test_record_argv_and_names(tmp_path):
    argv = record_argv("/venv/bin/py-spy", 4242, 7, tmp_path / "x.svg")
    assert argv[:4] == ["/venv/bin/py-spy", "record", "--pid", "4242"]
    assert "--nonblocking" in argv and argv[argv.index("--duration") + 1] == "7"
    assert argv[argv.index("--format") + 1] == "flamegraph"
    assert flame_name("2026-11-21", "ztunnel-node-0", "conn") == "2026-11-21-flame-ztunnel-node-0-conn.svg"
