"""The soak (`bench/soak.py`, issue 18): load through the mesh while ztunnel, the node agent and the
control plane are each killed once.

`load` (the checksumming echo server and the two load generators that run in the lab's pods; the
standard library only), `plan` (the timeline), `report` (the figures, the verdict, the markdown).
The pure parts are tested in `tests/bench/test_soak*.py`.
"""
