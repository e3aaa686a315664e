"""The image: the Containerfile's stages (compilers in the builder only, the runtime packages the code
loads, a non-root default user, ENTRYPOINT ambient), the build context (.containerignore), the wheel
it installs (built here for real with pip, offline), and `make image`'s choice of builder, with fake
builders standing in for podman and docker since no engine runs here."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import bpf.capture
import bpf.libbpf
import mesh
from tests.install.manifests import ROOT, container, flag, one

CONTAINERFILE = ROOT / "Containerfile"
# Packages that compile or carry headers: the final stage has none of them.
COMPILERS = re.compile(r"^(gcc|g\+\+|cpp|clang|llvm|make|build-essential|binutils|.*-dev|python3-pip|python3-venv)"
                       r"(-\d+)?$")


@dataclass(frozen=True)
class Stage:
    base: str
    name: str | None
    instructions: tuple[tuple[str, str], ...]

    def all(self, keyword: str) -> list[str]:
        return [rest for key, rest in self.instructions if key == keyword]

    def installed(self) -> set[str]:
        """The packages of every `apt-get install` in the stage's RUN lines."""
        packages: set[str] = set()
        for run in self.all("RUN"):
            for command in run.split("&&"):
                if "apt-get" not in command:
                    continue
                words = shlex.split(command)
                while words and "=" in words[0]:  # VAR=value before the command
                    words.pop(0)
                if words[:1] == ["apt-get"] and "install" in words:
                    packages |= {w for w in words[words.index("install") + 1:] if not w.startswith("-")}
        return packages


def stages() -> list[Stage]:
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    args: dict[str, str] = {}
    found: list[Stage] = []
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG" and not found and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
        elif keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            current = []
            found.append(Stage(base, name, ()))
        if found and keyword != "FROM":
            current.append((keyword, rest))
            found[-1] = Stage(found[-1].base, found[-1].name, tuple(current))
    return found


def test_two_stages_on_debian_slim() -> None:
    builder, final = stages()
    assert builder.name == "builder"
    for stage in (builder, final):
        assert re.search(r"debian:[a-z]+-slim$", stage.base), stage.base


def test_the_final_stage_has_the_runtime_the_code_loads_and_no_compiler() -> None:
    builder, final = stages()
    installed = final.installed()
    assert not {p for p in installed if COMPILERS.match(p)}, installed
    # bpf/libbpf.py binds libbpf.so.1 with ctypes: Debian's libbpf1.
    assert bpf.libbpf.LIBBPF_NAME == "libbpf.so.1" and "libbpf1" in installed
    assert "python3" in installed
    # The builder has what the final stage must not.
    assert {"clang", "gcc", "libbpf-dev"} <= builder.installed()


def test_the_final_stage_takes_only_built_files_from_the_builder() -> None:
    _, final = stages()
    copies = final.all("COPY")
    assert copies and all(c.startswith("--from=builder ") for c in copies), copies


def test_the_builder_compiles_with_the_makefiles_recipes() -> None:
    builder, _ = stages()
    makes = [shlex.split(run) for run in builder.all("RUN") if run.startswith("make ")]
    assert len(makes) == 1 and {"bpf", "cni-plugin"} <= set(makes[0]), makes
    # The object is built where bpf/capture.py loads it from, beside the module, before the wheel.
    assert bpf.capture.OBJECT_PATH.parent.name == "bpf" and bpf.capture.OBJECT_PATH.name == "capture.bpf.o"


def test_the_cni_plugin_is_where_the_installer_is_told_to_take_it() -> None:
    _, final = stages()
    destinations = [c.split()[-1] for c in final.all("COPY")]
    installer = container(one("DaemonSet", "ztunnel"), "install-cni")
    assert flag(installer["args"], "--plugin-binary") in destinations


def test_it_runs_ambient_as_a_non_root_user_by_default() -> None:
    _, final = stages()
    assert json.loads(final.all("ENTRYPOINT")[-1]) == ["ambient"]
    user = final.all("USER")[-1]
    uid = user.split(":")[0]
    # Numeric, so that the kubelet can check runAsNonRoot against it.
    assert uid.isdigit() and int(uid) != 0
    assert one("Deployment", "istiod")["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid)


def test_the_context_leaves_out_what_the_build_must_not_see_and_keeps_what_it_needs() -> None:
    ignored = {line.strip() for line in (ROOT / ".containerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "build", "bpf/*.o"} <= ignored
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", "README.md", "constraints.txt", "Makefile", "bpf", "bpf/cni"}
    needed |= {pattern.rstrip("*") for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert not needed & ignored


# ------------------------------------------------------------------ the wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The project's wheel, built by pip from a copy of the tree (the build writes build/ and
    *.egg-info beside its sources: not in the shared checkout). Offline: no index, no isolation."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    source.mkdir()
    shutil.copy2(ROOT / "pyproject.toml", source / "pyproject.toml")
    shutil.copy2(ROOT / "README.md", source / "README.md")
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        shutil.copytree(ROOT / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.o", "*.pyc"))
    # What `make bpf` leaves beside the module before the image builds the wheel; its bytes do not matter.
    (source / "bpf" / "capture.bpf.o").write_bytes(b"\x7fELF stand-in for the compiled program")
    out = base / "out"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
                    "--no-build-isolation", "--no-cache-dir", "--wheel-dir", str(out), str(source)],
                   check=True, timeout=300, capture_output=True)
    (built,) = out.glob("*.whl")
    return zipfile.ZipFile(built)


def test_the_wheel_is_the_mesh_version_with_the_ambient_command(wheel: zipfile.ZipFile) -> None:
    assert Path(wheel.filename or "").name.startswith(f"ambient_mesh-{mesh.__version__}-")
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    assert "ambient = ambient.cli:main" in wheel.read(entry_points).decode()
    assert "mesh/api/workload.proto" in wheel.namelist()


def test_the_wheel_carries_the_bpf_object_where_the_code_loads_it(wheel: zipfile.ZipFile) -> None:
    assert f"bpf/{bpf.capture.OBJECT_PATH.name}" in wheel.namelist()


# ------------------------------------------------------------------ make image


def fake_builder(directory: Path, name: str, info_status: int) -> tuple[Path, Path]:
    """An executable named like a builder: `info` exits with ``info_status``; anything else records its
    arguments in a file and succeeds."""
    directory.mkdir(parents=True, exist_ok=True)
    record = directory / f"{name}.args"
    program = directory / name
    program.write_text(f'#!/bin/sh\n[ "$1" = info ] && exit {info_status}\necho "$@" > {shlex.quote(str(record))}\n')
    program.chmod(0o755)
    return program, record


def make_image(builders: list[Path | str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "--no-print-directory", "-s", "-C", str(ROOT), "image",
                           "IMAGE_BUILDERS=" + " ".join(map(str, builders))],
                          capture_output=True, text=True, timeout=60)


needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


@needs_make
@pytest.mark.parametrize(("name", "verb"), [("podman", "build"), ("buildah", "bud"), ("docker", "build")])
def test_make_image_builds_with_the_first_builder_that_works(tmp_path: Path, name: str, verb: str) -> None:
    broken, broken_record = fake_builder(tmp_path / "a", "docker", info_status=1)
    working, record = fake_builder(tmp_path / "b", name, info_status=0)
    result = make_image([tmp_path / "absent", broken, working])
    assert result.returncode == 0, result.stderr
    assert record.read_text().split() == [verb, "-f", "Containerfile", "-t", f"ambient-mesh:{mesh.__version__}", "."]
    assert not broken_record.exists()


@needs_make
def test_make_image_says_what_to_install_when_no_builder_works(tmp_path: Path) -> None:
    docker, record = fake_builder(tmp_path, "docker", info_status=1)
    result = make_image([tmp_path / "podman", docker])
    assert result.returncode != 0
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("make image:")]
    assert "no working image builder" in line and f"{tmp_path / 'podman'} (not installed)" in line
    assert f"{docker} (installed, but '{docker} info' fails" in line and "install podman" in line
    assert not record.exists()
