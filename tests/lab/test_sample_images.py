"""The sample-image table: Istio's images under any registry, tag or digest → their built-in program,
the container's args as Kubernetes applies them, and any other image refused with how to fix it."""

from __future__ import annotations

import pytest

from lab.sample_images import SAMPLE_APPS_DIR, UnknownImageError, image_program, repository


@pytest.mark.parametrize("image, path", [
    ("curlimages/curl", "curlimages/curl"),
    ("docker.io/istio/examples-bookinfo-reviews-v2:1.20.1", "istio/examples-bookinfo-reviews-v2"),
    ("localhost:5000/mccutchen/go-httpbin:v2.15.0", "mccutchen/go-httpbin"),
    ("registry.example:5000/kong/httpbin@sha256:0123", "kong/httpbin"),
    ("nginx:1.27", "nginx"),
    ("docker.io/library/nginx", "nginx"),
    ("Docker.IO/Istio/TCP-Echo-Server:1.3", "istio/tcp-echo-server"),
])
def test_repository_drops_registry_tag_and_digest(image, path):
    assert repository(image) == path


def app_of(argv):
    assert argv[:3] == (argv[0], "-S", str(SAMPLE_APPS_DIR)), argv
    return argv[3:]


@pytest.mark.parametrize("image, app, env", [
    ("docker.io/mccutchen/go-httpbin:v2.15.0", ("httpbin", "--flavour", "go"), {}),
    ("ghcr.io/mccutchen/go-httpbin", ("httpbin", "--flavour", "go"), {}),
    ("quay.io/sail-dev/go-httpbin:latest", ("httpbin", "--flavour", "go"), {}),
    ("docker.io/kong/httpbin:0.1.0", ("httpbin", "--flavour", "python", "--port", "80"), {}),
    ("docker.io/kennethreitz/httpbin", ("httpbin", "--flavour", "python", "--port", "80"), {}),
    ("docker.io/istio/examples-helloworld-v1:1.0", ("helloworld",), {"SERVICE_VERSION": "v1"}),
    ("istio/examples-helloworld-v2", ("helloworld",), {"SERVICE_VERSION": "v2"}),
    ("docker.io/istio/tcp-echo-server:1.3", ("tcp_echo", "9000", "hello"), {}),
    ("docker.io/istio/examples-bookinfo-details-v1:1.20.1", ("details", "9080"), {}),
    ("docker.io/istio/examples-bookinfo-ratings-v1:1.20.1", ("ratings", "9080"), {}),
    ("docker.io/istio/examples-bookinfo-reviews-v1:1.20.1", ("reviews", "--port", "9080"),
     {"SERVICE_VERSION": "v1", "ENABLE_RATINGS": "false"}),
    ("docker.io/istio/examples-bookinfo-reviews-v2:1.20.1", ("reviews", "--port", "9080"),
     {"SERVICE_VERSION": "v2", "ENABLE_RATINGS": "true", "STAR_COLOR": "black"}),
    ("gcr.io/istio-release/examples-bookinfo-reviews-v3:1.18.0", ("reviews", "--port", "9080"),
     {"SERVICE_VERSION": "v3", "ENABLE_RATINGS": "true", "STAR_COLOR": "red"}),
    ("docker.io/istio/examples-bookinfo-productpage-v1:1.20.1", ("productpage", "9080"), {}),
])
def test_sample_images_run_their_built_in_program(image, app, env):
    program = image_program(image)
    assert app_of(program.argv) == app
    assert dict(program.env) == env


def test_curl_sleeps_without_args_and_runs_curl_or_the_args_as_its_entrypoint_does():
    assert image_program("curlimages/curl").argv == ("sleep", "infinity")
    assert image_program("docker.io/curlimages/curl:8.5.0", ("-sS", "http://httpbin:8000/get")).argv == (
        "curl", "-sS", "http://httpbin:8000/get")
    assert image_program("curlimages/curl", ("sleep", "3600")).argv == ("sleep", "3600")


def test_args_follow_an_entrypoint_and_replace_its_cmd():
    assert app_of(image_program("istio/tcp-echo-server:1.3", ("9000,9001", "one")).argv) == (
        "tcp_echo", "9000,9001", "one")


def test_args_of_an_image_without_entrypoint_are_refused_with_the_fix():
    with pytest.raises(UnknownImageError, match=r"'istio/examples-helloworld-v1' \(helloworld v1 on 5000\) has no "
                       r"ENTRYPOINT.*give the container a `command:`"):
        image_program("istio/examples-helloworld-v1", ("--port", "8080"))


@pytest.mark.parametrize("image", ["nginx:1.27", "docker.io/istio/proxyv2:1.24.0", "examples-bookinfo-mongodb",
                                   "istio/examples-bookinfo-reviews-v4", "curl"])
def test_any_other_image_is_an_error_naming_it_and_saying_to_give_a_command(image):
    with pytest.raises(UnknownImageError) as caught:
        image_program(image)
    message = str(caught.value)
    assert repr(image) in message and "give the container a `command:`" in message
    assert "curlimages/curl" in message and "go-httpbin" in message  # the images it does know


def test_a_container_with_neither_command_nor_image_is_told_to_give_a_command():
    with pytest.raises(UnknownImageError, match="neither a command nor an image: give it a `command:`"):
        image_program("")
