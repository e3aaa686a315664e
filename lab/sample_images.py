"""Istio's sample images, run unchanged: an image reference → the built-in program the lab runs for
a container that has an image and no ``command`` (the programs are in ``lab.sample_apps``).

A pure function of the image and the container's ``args``. The reference is reduced to its repository
path (registry host, tag and digest dropped: ``docker.io/istio/examples-bookinfo-reviews-v2:1.20.1`` →
``istio/examples-bookinfo-reviews-v2``), then matched against the table by its last path components,
so that mirrors (``quay.io/sail-dev/go-httpbin``, ``ghcr.io/mccutchen/go-httpbin``) run the same
program. Each entry mirrors its image as Kubernetes sees it: an ENTRYPOINT (the container's ``args``
follow it) and a CMD (replaced by ``args``), and the image's ENV (under the container's own ``env``).
An image whose program is all CMD (no ENTRYPOINT) cannot take ``args`` here: they would replace the
program itself, which only a ``command:`` can give. Any other image is an error naming it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

# The package of built-in apps, run as a directory (``python -S <dir> <app> ...``, see its __main__).
SAMPLE_APPS_DIR = Path(__file__).resolve().parent / "sample_apps"
# -S: no site-packages, so the app imports only the standard library and its own package.
PYTHON = (sys.executable, "-S")


def _frozen(**values: str) -> Mapping[str, str]:
    return MappingProxyType(dict(values))


@dataclass(frozen=True)
class SampleImage:
    """What an image runs: ``entrypoint`` + (the container's ``args`` or ``cmd``), with ``env``."""

    names: tuple[str, ...]  # repository paths (their last components) this entry stands for
    entrypoint: tuple[str, ...]  # a full argv, or () when the image has no ENTRYPOINT
    cmd: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=lambda: _frozen())
    what: str = ""  # for messages and the README: what the original is


def _app(name: str, *args: str) -> tuple[str, ...]:
    return (*PYTHON, str(SAMPLE_APPS_DIR), name, *args)


def _reviews(version: str, **env: str) -> SampleImage:
    return SampleImage((f"examples-bookinfo-reviews-{version}",), (), _app("reviews", "--port", "9080"),
                       _frozen(SERVICE_VERSION=version, **env), f"Bookinfo reviews {version}")


SAMPLE_IMAGES: tuple[SampleImage, ...] = (
    # curlimages/curl's entrypoint runs curl when the first argument is an option, else the arguments
    # (`lab.sample_images.image_argv` does the same); without arguments the image would run `curl` and
    # exit at once, so the lab keeps the pod up instead: Istio's samples always `exec` curl in it.
    SampleImage(("curlimages/curl", "curl/curl", "governmentpaas/curl-ssl"), (), ("sleep", "infinity"),
                what="curl (sleeps; `ambient exec` runs curl in it)"),
    SampleImage(("go-httpbin",), (), _app("httpbin", "--flavour", "go"), what="go-httpbin on 8080"),
    SampleImage(("kennethreitz/httpbin", "kong/httpbin"), (), _app("httpbin", "--flavour", "python", "--port", "80"),
                what="httpbin (Python) on 80"),
    SampleImage(("examples-helloworld-v1",), (), _app("helloworld"), _frozen(SERVICE_VERSION="v1"),
                "helloworld v1 on 5000"),
    SampleImage(("examples-helloworld-v2",), (), _app("helloworld"), _frozen(SERVICE_VERSION="v2"),
                "helloworld v2 on 5000"),
    SampleImage(("tcp-echo-server",), _app("tcp_echo"), ("9000", "hello"), what="tcp-echo on 9000"),
    SampleImage(("examples-bookinfo-details-v1",), (), _app("details", "9080"), what="Bookinfo details"),
    SampleImage(("examples-bookinfo-ratings-v1",), (), _app("ratings", "9080"), what="Bookinfo ratings"),
    _reviews("v1", ENABLE_RATINGS="false"),
    _reviews("v2", ENABLE_RATINGS="true", STAR_COLOR="black"),
    _reviews("v3", ENABLE_RATINGS="true", STAR_COLOR="red"),
    SampleImage(("examples-bookinfo-productpage-v1",), (), _app("productpage", "9080"), what="Bookinfo productpage"),
)


class UnknownImageError(ValueError):
    """The image is not one the lab has a built-in program for (or cannot take these args)."""


def repository(image: str) -> str:
    """The repository path of an image reference: no registry host, no tag, no digest, no library/."""
    name = image.strip().split("@", 1)[0]
    head, _, tail = name.rpartition("/")
    if ":" in tail:  # a tag (a colon before the last slash belongs to a registry's port)
        name = f"{head}/{tail.split(':', 1)[0]}" if head else tail.split(":", 1)[0]
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]  # Docker's rule: a first component with a dot or a port, or localhost, is a registry
    if parts[:1] == ["library"]:
        parts = parts[1:]
    return "/".join(parts).lower()


def find_image(image: str) -> SampleImage | None:
    path = repository(image)
    for entry in SAMPLE_IMAGES:
        for name in entry.names:
            if path == name or path.endswith("/" + name):
                return entry
    return None


def known_images() -> str:
    return ", ".join(name for entry in SAMPLE_IMAGES for name in entry.names)


@dataclass(frozen=True)
class ImageProgram:
    argv: tuple[str, ...]
    env: Mapping[str, str]  # the image's ENV: the container's own env goes over it


def image_program(image: str, args: tuple[str, ...] = ()) -> ImageProgram:
    """The program the lab runs for a container with this image, these args and no command."""
    if not image:
        raise UnknownImageError("it has neither a command nor an image: give it a `command:`")
    entry = find_image(image)
    if entry is None:
        raise UnknownImageError(
            f"the lab runs commands, not images, and {image!r} is not one of Istio's sample images it has built in "
            f"({known_images()}): give the container a `command:` (and `args:`) to run")
    if entry.entrypoint:
        return ImageProgram((*entry.entrypoint, *(args or entry.cmd)), entry.env)
    if entry.names[0] == "curlimages/curl" and args:
        # curlimages/curl's entrypoint.sh: `curl ARGS` when the first is an option, else ARGS themselves
        return ImageProgram(("curl", *args) if args[0].startswith("-") else args, entry.env)
    if args:
        raise UnknownImageError(
            f"image {image!r} ({entry.what}) has no ENTRYPOINT, so `args:` would replace its whole program, which "
            "the lab's built-in cannot run: give the container a `command:` instead")
    return ImageProgram(entry.cmd, entry.env)
