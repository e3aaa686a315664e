"""Whether a pod a CNI ADD names is to be captured: its labels and its namespace's, read from the API.

istio-cni asks the same question in its plugin (``isAmbientPod``: GET the pod, GET the namespace, match
the enablement selectors); here the node agent asks it, with the official ``kubernetes`` client. The
rule is the control plane's (``mesh.resources.is_enrolled``, one function for both): the pod's
``istio.io/dataplane-mode`` wins (``none`` opts out), else the
namespace's, and only the exact value ``ambient`` enrolls.

The client is synchronous: ``KubernetesPodLookup.captured`` blocks, and the agent calls it through
``trio.to_thread.run_sync``. Every API failure (unreachable, 403, the pod not found) is a
``PodLookupError``: the agent then fails the ADD, and the runtime retries the sandbox.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from mesh.resources import is_enrolled

# Each GET's bound: the plugin gives the agent 30 s for the whole ADD (lookup, attach, answer).
API_TIMEOUT = 5.0


class PodLookupError(Exception):
    """The API could not say whether the pod is captured (a message without credentials)."""


class PodLookup(Protocol):
    def captured(self, namespace: str, name: str) -> bool: ...


class KubernetesPodLookup:
    """``captured(namespace, name)`` from the API server: in-cluster credentials, or a kubeconfig."""

    def __init__(self, kubeconfig: Path | None = None, api_client: object | None = None) -> None:
        from kubernetes import client, config

        if api_client is None:
            configuration = client.Configuration()
            try:
                if kubeconfig is not None:
                    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
                else:
                    config.load_incluster_config(client_configuration=configuration)
            except (config.ConfigException, OSError) as exc:
                raise PodLookupError(f"cannot configure the Kubernetes API client: {exc}") from None
            api_client = client.ApiClient(configuration)
        self._api = client.CoreV1Api(api_client)

    def captured(self, namespace: str, name: str) -> bool:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            pod = self._api.read_namespaced_pod(name, namespace, _request_timeout=API_TIMEOUT)
            ns = self._api.read_namespace(namespace, _request_timeout=API_TIMEOUT)
        except ApiException as exc:  # its text holds the response headers and body, never our token
            raise PodLookupError(f"pod {namespace}/{name}: the API server answered {exc.status} {exc.reason}") from None
        except (HTTPError, OSError) as exc:
            raise PodLookupError(f"pod {namespace}/{name}: cannot reach the API server: {exc}") from None
        return is_enrolled(_labels(pod), _labels(ns))


def _labels(obj: object) -> Mapping[str, str]:
    meta = getattr(obj, "metadata", None)
    return getattr(meta, "labels", None) or {}
