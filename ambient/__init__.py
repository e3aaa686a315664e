"""The ``ambient`` command: the one place that may import every package, the lab included.

``cli`` routes each command to the module that registers it; ``ztunnel_config`` is
``ambient ztunnel-config``, a reader of a ztunnel's admin port that finds a lab node's ztunnel.
"""
