"""``kmodkit kmm``: a project as Kernel Module Management resources (the Module, its Dockerfile, preflight).

:class:`KmmExport` is validated when built; :meth:`KmmExport.render` makes the documents and
:meth:`KmmOutput.write` commits them.  What is made, and from which home:

* the ``Module`` (``kmm.sigs.x-k8s.io/v1beta1``, the one version its CRD serves) with one ``kernelMappings``
  entry per target kernel (:func:`kmodkit.kbuild.builder.target_releases`), ``literal``; with
  ``flavour_regexp`` one ``regexp`` entry ``^.+-FLAVOUR$`` per flavour, so a node that boots a newer ABI of
  the flavour is built for without regenerating (RE2 and Python agree on that regexp);
* the in-cluster build: a ConfigMap holding :func:`kmodkit.kmm.dockerfile.in_cluster` under ``dockerfile``,
  each mapping's ``build`` naming it; or, ``prebuilt``, one image per kernel made from ``out/KVER``
  (:func:`kmodkit.kmm.dockerfile.prebuilt`);
* ``sign`` when the manifest names a key (in-cluster only: prebuilt modules are signed by ``kmodkit build``):
  references to two Secrets KMM reads (``key`` and ``cert`` entries), named ``NAME-signing-key`` and
  ``NAME-signing-cert``; their contents never enter a generated file, :attr:`KmmOutput.secrets` says how to
  create them;
* ``modprobe``: the module loaded last as ``moduleName`` with its manifest defaults and ``options`` as
  ``parameters`` (:func:`kmodkit.loader.params.manifest_defaults`), and every module of the project in
  ``modulesLoadingOrder`` (last loaded first, as KMM wants it), the order being the load plan's
  (:class:`kmodkit.loader.plan.Planner`, which reads the built modules' ``depends=``);
* a ``PreflightValidation`` (``kmm.sigs.x-k8s.io/v1beta2``, the CRD's storage version; v1beta1 is deprecated;
  cluster-scoped) for ``next_kernel``, which is also given a mapping.

The documents are JSON, written as a YAML stream (``---`` between them): JSON is YAML, kubectl reads it, and
no YAML writer is needed (PyYAML is not a dependency), which also keeps YAML 1.1's pitfalls away (a release
such as ``6.12`` is never read back as a number).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kmodkit.errors import UserError
from kmodkit.kbuild import kernels as kern
from kmodkit.kbuild.builder import target_releases
from kmodkit.kbuild.manifest import Manifest
from kmodkit.kbuild.project import shown
from kmodkit.kmm import dockerfile
from kmodkit.sysroot import HOST, Root

GROUP = "kmm.sigs.x-k8s.io"
#: the Module CRD's only version (served and stored)
MODULE_API = f"{GROUP}/v1beta1"
#: the PreflightValidation CRD's storage version (v1beta1 is served but deprecated)
PREFLIGHT_API = f"{GROUP}/v1beta2"
#: KMM's admission webhook refuses a Module whose name and namespace are longer together
MAX_NAME_AND_NAMESPACE = 40
#: what the output directory holds
YAML_FILE = "kmm.yaml"
DOCKERFILE = "Dockerfile"
#: a container image name without tag or digest: [registry[:port]/]path, path components in lower case
_IMAGE = re.compile(r"^(?:[A-Za-z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
                    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
#: an image tag (the distribution spec's grammar)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
#: an RFC 1123 label: a namespace
_LABEL = re.compile(r"^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$")
#: uname machine -> the kubernetes.io/arch label of nodes running it
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64le", "s390x": "s390x", "armv7l": "arm"}


@dataclass(frozen=True)
class SecretRef:
    """A Secret KMM reads the signing key or certificate from; created by the user, never by kmodkit."""

    name: str  #: the Secret's name
    entry: str  #: the entry KMM reads: "key" or "cert"
    source: Path  #: the manifest's file to create it from (its path only is ever written)

    def command(self, namespace: str) -> str:
        """The kubectl command creating the Secret from :attr:`source`."""
        return (f"kubectl -n {shlex.quote(namespace)} create secret generic {shlex.quote(self.name)} "
                f"--from-file={self.entry}={shlex.quote(str(self.source))}")


@dataclass(frozen=True)
class KmmOutput:
    """The generated resources and what the user still has to do."""

    name: str  #: the Module's metadata.name
    namespace: str  #: the namespace of the Module and the ConfigMap
    documents: tuple[dict[str, Any], ...]  #: ConfigMap (in-cluster), Module, PreflightValidation (when asked)
    dockerfile: str  #: the in-cluster Dockerfile (also in the ConfigMap) or the prebuilt one
    kernels: tuple[str, ...]  #: the kernels mapped, in order (the next kernel last)
    load_order: tuple[str, ...]  #: the project's modules in the order they load
    secrets: tuple[SecretRef, ...] = ()  #: the Secrets the sign section names, () when not signing
    images: tuple[tuple[str, str], ...] = ()  #: prebuilt: (kernel, image) to build and push; () in-cluster
    notes: tuple[str, ...] = ()  #: what the user should know, one sentence each

    def yaml(self) -> str:
        """The documents as one YAML stream (each a JSON document) with a comment saying how to apply it."""
        head = (f"# Kernel Module Management resources for {self.name}, written by 'kmodkit kmm' "
                f"(each document is JSON, which is YAML).\n# Apply with: kubectl apply -f {YAML_FILE}\n")
        return head + "".join("---\n" + json.dumps(d, indent=2) + "\n" for d in self.documents)

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON object: the documents and what the user still has to do (no key material)."""
        return {"name": self.name, "namespace": self.namespace, "kernels": list(self.kernels),
                "load_order": list(self.load_order), "documents": list(self.documents),
                "secrets": [{"name": s.name, "entry": s.entry, "from": str(s.source),
                             "command": s.command(self.namespace)} for s in self.secrets],
                "images": [{"kernel": k, "image": i} for k, i in self.images], "notes": list(self.notes)}

    def files(self) -> dict[str, bytes]:
        """File name -> content of what :meth:`write` puts in the output directory."""
        return {YAML_FILE: self.yaml().encode(), DOCKERFILE: self.dockerfile.encode()}

    def write(self, out: Path) -> list[Path]:
        """Write :meth:`files` into ``out`` together (temp, journal, rename); the paths written."""
        from kmodkit.fileio import commit_files

        out.mkdir(parents=True, exist_ok=True)
        files = self.files()
        commit_files(str(out), files)
        return [out / name for name in files]


@dataclass
class KmmExport:
    """KMM resources for one project; validated on construction (UserError names the bad value and the fix).

    ``kernels`` empty: the manifest's targets, else (or with ``all_installed``) every installed kernel.
    ``image`` is REGISTRY/NAME without a tag: each kernel's image is IMAGE:KVER.
    """

    project: Path
    image: str | None
    kernels: list[str] = field(default_factory=list)
    all_installed: bool = False
    prebuilt: bool = False
    namespace: str = "default"
    next_kernel: str | None = None
    flavour_regexp: bool = False
    sign: bool = True  #: emit the sign section when the manifest names a key
    base_image: str | None = None  #: the base of the image's stages; None: the build host's distro (images.toml)
    out: Path | None = None  #: where the files go (left out of the sources when inside the project)
    root: Root = HOST

    def __post_init__(self) -> None:
        self.project = Path(self.project).resolve()
        self.manifest = Manifest.load(self.project)
        if self.image is None:
            raise UserError("--image", "is needed: KMM pushes (in-cluster) or pulls (--prebuilt) the kmod images "
                            "there", "pass --image REGISTRY/NAME, e.g. --image quay.io/me/hello")
        tail = self.image.rsplit("/", 1)[-1]
        if ":" in tail or "@" in self.image:
            bare = self.image.split("@")[0]
            bare = bare.rsplit(":", 1)[0] if ":" in bare.rsplit("/", 1)[-1] else bare
            raise UserError(f"--image {shown(self.image)}", "holds a tag or digest, and each kernel's image is tagged "
                            "with its release", f"pass the name alone, e.g. --image {bare}")
        if not _IMAGE.match(self.image):
            raise UserError(f"--image {shown(self.image)}", "is not an image name (REGISTRY/PATH, the path in lower case)",
                            "e.g. --image registry.example.com/team/hello")
        if not _LABEL.match(self.namespace):
            raise UserError(f"--namespace {shown(self.namespace)}", "is not a Kubernetes namespace name",
                            "use lower-case letters, digits and '-', at most 63")
        if self.kernels and self.all_installed:
            raise UserError("-k/--all-installed", "name kernels or ask for all installed ones, not both")
        if self.prebuilt and self.flavour_regexp:
            raise UserError("--flavour-regexp", "maps kernels nobody has built for, and --prebuilt maps built images",
                            "drop one of them")
        if self.manifest.depends:
            raise UserError(str(self.manifest.path), "depends on other projects ([project] depends), whose "
                            "modules and exports a KMM image of this project alone cannot hold",
                            "export each project as its own Module and build the dependent images yourself")
        self.name = _k8s_name(self.manifest.name)
        if len(self.name) + len(self.namespace) > MAX_NAME_AND_NAMESPACE:
            raise UserError(f"{self.namespace}/{self.name}", f"is longer than KMM's webhook takes ("
                            f"{MAX_NAME_AND_NAMESPACE} characters for the name and namespace together)",
                            "pass a shorter --namespace")
        targets = target_releases(self.manifest, self.kernels, self.all_installed, self.root)
        if self.next_kernel is not None and self.next_kernel not in targets:
            targets.append(self.next_kernel)
        if not targets:
            raise UserError(str(self.root.join("/lib/modules")), "no kernel is installed to map",
                            "name kernels with -k")
        for release in targets:
            problem = kern.release_problem(release)
            if problem is not None:
                flag = "--next-kernel" if release == self.next_kernel else "-k"
                raise UserError(f"{flag} {release!r}", problem, "name a kernel as /lib/modules does")
        self.targets = tuple(targets)
        if self.prebuilt:
            missing = [k for k in self.targets if not all(p.is_file() for p in self._built(k))]
            if missing:
                raise UserError(str(self.project / "out"), f"holds no complete build for {', '.join(missing)}, and "
                                "--prebuilt packs what kmodkit build made",
                                "kmodkit build " + " ".join(f"-k {shlex.quote(k)}" for k in missing))
        signing = self.manifest.signing
        self.signing = signing if self.sign and not self.prebuilt else None
        if self.signing is not None:
            if self.signing.key.startswith("pkcs11:"):
                raise UserError(f"{self.manifest.path}: [signing] key", "is a PKCS#11 token, and KMM signs with a "
                                "key file held in a Secret", "pass --no-sign (and sign with --prebuilt builds)")
            if not self.signing.cert:
                raise UserError(f"{self.manifest.path}: [signing] cert", "is empty, and KMM reads the certificate "
                                "from a Secret of its own", "name the certificate file in [signing] cert")

    def _built(self, release: str) -> list[Path]:
        return [self.project / "out" / release / f"{m.name}.ko" for m in self.manifest.modules]

    def render(self) -> KmmOutput:
        """The resources; raises UserError when the project cannot be built in the cluster (see dockerfile)."""
        from kmodkit.kbuild.platform import detect_distro

        recipe = dockerfile.recipe(detect_distro(self.root), self.base_image)
        leave_out = (self.out,) if self.out is not None else ()
        text = dockerfile.prebuilt(self.manifest, recipe) if self.prebuilt else \
            dockerfile.in_cluster(self.manifest, self.project, recipe, leave_out)
        order = load_order(self.manifest, self.project, self.targets, self.root)
        notes: list[str] = []
        secrets: tuple[SecretRef, ...] = ()
        sign: dict[str, Any] | None = None
        if self.signing is not None:
            secrets = (SecretRef(f"{self.name}-signing-key", "key", self.project / self.signing.key),
                       SecretRef(f"{self.name}-signing-cert", "cert", self.project / self.signing.cert))
            sign = {"keySecret": {"name": secrets[0].name}, "certSecret": {"name": secrets[1].name},
                    "filesToSign": [f"{dockerfile.DIR_NAME}/lib/modules/${{KERNEL_FULL_VERSION}}/{n}.ko"
                                    for n in order]}
            if self.signing.hash != "sha256":
                notes.append(f"KMM signs with sha256, not the manifest's {self.signing.hash}")
        elif self.prebuilt and self.manifest.signing is not None and self.sign:
            notes.append("the modules are signed by 'kmodkit build' with the manifest's key; KMM does not sign "
                         "prebuilt images again")
        configmap = f"{self.name}-dockerfile"
        mappings, images = self._mappings(configmap, sign, notes)
        documents: list[dict[str, Any]] = []
        if not self.prebuilt:
            documents.append({"apiVersion": "v1", "kind": "ConfigMap",
                              "metadata": {"name": configmap, "namespace": self.namespace},
                              "data": {"dockerfile": text}})
        documents.append(self._module(mappings, order, notes))
        if self.next_kernel is not None:
            documents.append({"apiVersion": PREFLIGHT_API, "kind": "PreflightValidation",
                              "metadata": {"name": _k8s_name(f"{self.name}-{self.next_kernel}", 253)},
                              # a build's image must be pushed for the sign step (or the nodes) to find it
                              "spec": {"kernelVersion": self.next_kernel, "pushBuiltImage": not self.prebuilt}})
        return KmmOutput(self.name, self.namespace, tuple(documents), text, self.targets, order, secrets,
                         tuple(images), tuple(notes))

    def _mappings(self, configmap: str, sign: dict[str, Any] | None,
                  notes: list[str]) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
        mappings: list[dict[str, Any]] = []
        images: list[tuple[str, str]] = []
        extra: dict[str, Any] = {}
        if not self.prebuilt:
            extra["build"] = {"dockerfileConfigMap": {"name": configmap}}
        if sign is not None:
            extra["sign"] = sign
        by_flavour: dict[str, list[str]] = {}
        for release in self.targets:
            flavour = kern.kernel(release, self.root).flavour if self.flavour_regexp else ""
            by_flavour.setdefault(flavour, []).append(release)
        # the longest flavour first: KMM takes the first mapping that matches, and -amd64 matches -cloud-amd64
        for flavour in sorted((f for f in by_flavour if f), key=len, reverse=True):
            # punctuation but '-' and '_' escaped: literal in RE2 and in Python alike
            pattern = re.sub(r"([^A-Za-z0-9_-])", r"\\\1", flavour)
            mappings.append({"regexp": f"^.+-{pattern}$",
                             "containerImage": f"{self.image}:${{KERNEL_FULL_VERSION}}", **extra})
            odd = [k for k in by_flavour[flavour] if not _TAG.match(k)]
            if odd:
                notes.append(f"{', '.join(odd)} cannot be an image tag as it is (it holds '+'); unless your KMM "
                             "normalises the tag it substitutes, map such kernels literally (no --flavour-regexp)")
        for release in by_flavour.get("", []):
            tag = release if _TAG.match(release) else re.sub(r"[^A-Za-z0-9_.-]", "_", release)
            # KMM substitutes the node's release; a release that is no valid tag is written out, made one
            image = f"{self.image}:{tag}" if self.prebuilt or tag != release else \
                f"{self.image}:${{KERNEL_FULL_VERSION}}"
            mappings.append({"literal": release, "containerImage": image, **extra})
            images.append((release, f"{self.image}:{tag}"))
        return mappings, images if self.prebuilt else []

    def _module(self, mappings: list[dict[str, Any]], order: tuple[str, ...], notes: list[str]) -> dict[str, Any]:
        from kmodkit.loader.params import join_params, manifest_defaults, split_words

        last = order[-1]
        spec = self.manifest.module(last)
        assert spec is not None
        params = join_params(manifest_defaults(self.manifest, last), split_words(spec.options))
        modprobe: dict[str, Any] = {"moduleName": last, "dirName": dockerfile.DIR_NAME}
        if params:
            modprobe["parameters"] = list(params)
        if len(order) > 1:
            modprobe["modulesLoadingOrder"] = list(reversed(order))
            for m in self.manifest.modules:
                if m.name != last and (manifest_defaults(self.manifest, m.name) or m.options):
                    notes.append(f"KMM passes parameters to {last} only; {m.name}'s defaults and options are not "
                                 "passed (its built-in defaults apply)")
        machine = os.uname().machine if self.root.is_host else ""
        selector = {"kubernetes.io/arch": _ARCH[machine]} if machine in _ARCH else {}
        return {"apiVersion": MODULE_API, "kind": "Module",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {"moduleLoader": {"container": {"modprobe": modprobe, "kernelMappings": mappings}},
                         "selector": selector}}


def load_order(manifest: Manifest, project: Path, releases: tuple[str, ...], root: Root = HOST) -> tuple[str, ...]:
    """The project's modules in the order they load: the load plan of each module built for the first of
    ``releases`` that has a build and an installed tree (its ``depends=`` among the files beside it).

    A project of one module needs no build.  Raises UserError when a project of several has none.
    """
    names = [m.name for m in manifest.modules]
    if len(names) == 1:
        return tuple(names)
    from kmodkit.index.config import ModprobeConfig
    from kmodkit.loader.plan import Planner

    for release in releases:
        files = [project / "out" / release / f"{n}.ko" for n in names]
        k = kern.kernel(release, root)
        if not k.installed or not all(f.is_file() for f in files):
            continue
        # a KMM worker reads no modprobe.d of the node: only the tree's own files count
        planner = Planner(str(k.moddir), ModprobeConfig.load(str(k.moddir), [], cmdline=""))
        order: list[str] = []
        for f in files:
            for step in planner.plan(str(f)).steps:
                if step.name in names and step.name not in order:
                    order.append(step.name)
        return tuple(order)
    raise UserError(str(project / "out"), f"holds no build of its {len(names)} modules for an installed kernel, and "
                    "their loading order comes from the built modules' dependencies",
                    f"kmodkit build {shlex.quote(str(project))} -k {shlex.quote(releases[0])}")


def _k8s_name(text: str, limit: int = 63) -> str:
    """``text`` as a Kubernetes object name: lower case, '_' and other characters made '-', at most ``limit``."""
    name = re.sub(r"[^a-z0-9.-]+", "-", text.lower()).strip("-.")[:limit].rstrip("-.")
    return name or "module"
