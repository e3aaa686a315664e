"""Settings for the whole suite, applied before any test module is imported."""

import os

# The suite runs gRPC servers and clients (the CA, discovery) and later, in the same interpreter,
# starts lab processes with subprocess's preexec_fn (lab.network.run_in_netns: setns between fork and
# exec). With fork support on, gRPC's at-fork handlers restart its pollers in that child, where they
# die on the fds subprocess closes ("epoll_wait error: Bad file descriptor") and the child fails.
# gRPC reads this once, when it initialises. No mesh process uses gRPC and then forks that way.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
