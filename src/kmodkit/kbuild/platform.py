"""Where we run: the distro family (from os-release) and the cloud (from DMI), matched against tables in data.

Everything reads below a root directory so that a fake root (an os-release file, a DMI directory, a
sysfs tree) stands for another machine.  The tables are ``distros.toml`` and ``clouds.toml`` next to
this file; each entry carries the example it was written from.
"""

from __future__ import annotations

import functools
import shlex
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from kmodkit.errors import ConfigError
from kmodkit.sysroot import HOST, Root

#: DMI files the cloud table may match on
DMI_FIELDS = ("sys_vendor", "product_name", "product_version", "bios_vendor", "bios_version", "chassis_asset_tag")


class ShellText(str):
    """Shell text that a fix command holds as written, e.g. ``$(uname -r)``; never a value from the user."""


@dataclass(frozen=True)
class Family:
    """A distro family and the commands that install what a module build needs."""

    key: str  #: table key: debian, ubuntu, rhel, fedora, amzn, alinux, suse
    name: str  #: human name, e.g. "Amazon Linux"
    ids: tuple[str, ...]  #: os-release IDs that belong to the family
    manager: str  #: package manager for the default version (apt-get, dnf, yum, zypper)
    manager_by_version: dict[str, str]  #: VERSION_ID major -> manager, where a release used another tool
    headers: str  #: command template installing a kernel's headers ({kver}, {manager}, {flavour})
    current: str  #: command template installing the distro's current kernel and its headers ({flavour})
    compiler: str  #: command template installing a compiler of a major version ({major}, {manager})
    tool: str  #: command template installing a package ({package}, {manager})
    packages: dict[str, str]  #: tool name (make, gcc, kmod, openssl, pahole) -> package name
    example: str  #: the os-release lines this entry was written from


@dataclass(frozen=True)
class Distro:
    """The distro found in os-release, with its family (None when no table entry matches)."""

    id: str  #: os-release ID, e.g. "debian"; "" when os-release is absent
    id_like: tuple[str, ...]  #: os-release ID_LIKE words
    version_id: str  #: os-release VERSION_ID, e.g. "12"; "" when absent
    pretty_name: str  #: os-release PRETTY_NAME, or ID when absent
    family: Family | None  #: the matched family, None for an unknown distro

    @property
    def manager(self) -> str | None:
        """The package manager for this release, or None for an unknown distro."""
        if self.family is None:
            return None
        major = self.version_id.split(".", 1)[0]
        return self.family.manager_by_version.get(major, self.family.manager)

    def command(self, which: str, **values: str) -> str | None:
        """The install command of template ``which`` (headers, compiler, tool) filled in; None for an unknown distro.

        Every value is shell-quoted, since a user pastes the command into a shell and a kernel release may come
        from a manifest; a :class:`ShellText` value is inserted as written.
        """
        if self.family is None:
            return None
        template: str = getattr(self.family, which)
        quoted = {k: v if isinstance(v, ShellText) else shlex.quote(v) for k, v in values.items()}
        return template.format(manager=self.manager, **quoted)

    def tool_command(self, tool: str) -> str | None:
        """The command installing ``tool`` (make, gcc, kmod, openssl, pahole); None for an unknown distro."""
        if self.family is None:
            return None
        return self.command("tool", package=self.family.packages.get(tool, tool))


@dataclass(frozen=True)
class Cloud:
    """A cloud recognised from DMI strings."""

    key: str  #: table key: aws, gce, azure, alibaba, ...
    name: str  #: human name, e.g. "Amazon EC2"
    match: dict[str, tuple[str, ...]]  #: DMI field -> prefixes that identify the cloud
    example: str  #: the DMI strings this entry was written from


@dataclass(frozen=True)
class Platform:
    """The machine below ``root``: distro, cloud and the DMI strings they came from."""

    root: Root  #: the machine everything was read from
    distro: Distro  #: the distro family
    cloud: Cloud | None  #: the cloud, None when no cloud was detected
    dmi: dict[str, str] = field(default_factory=dict)  #: DMI field -> value, only the fields present


@functools.cache
def families() -> tuple[Family, ...]:
    """Every distro family of ``distros.toml``, in table order."""
    table = _load("distros.toml")
    out = []
    for key, row in table.items():
        out.append(Family(
            key=key, name=row["name"], ids=tuple(row["ids"]), manager=row["manager"],
            manager_by_version=dict(row.get("manager_by_version", {})), headers=row["headers"],
            current=row["current"],
            compiler=row["compiler"], tool=row["tool"], packages=dict(row["packages"]), example=row["example"],
        ))
    return tuple(out)


@functools.cache
def clouds() -> tuple[Cloud, ...]:
    """Every cloud of ``clouds.toml``, in match order."""
    return tuple(
        Cloud(key=row["key"], name=row["name"], match={k: tuple(v) for k, v in row["match"].items()},
              example=row["example"])
        for row in _load("clouds.toml")["cloud"]
    )


def _load(name: str) -> dict[str, Any]:
    text = resources.files("kmodkit.kbuild").joinpath(name).read_text()
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # a packaging bug, but say where
        raise ConfigError(f"kmodkit/kbuild/{name}", str(exc)) from exc


def parse_os_release(text: str) -> dict[str, str]:
    """KEY=value pairs of an os-release file (quotes removed); empty for an empty file."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        try:
            words = shlex.split(value)
        except ValueError:
            words = [value.strip("\"'")]
        out[key.strip()] = words[0] if words else ""
    return out


def read_os_release(root: Root) -> dict[str, str]:
    """os-release of ``root`` (/etc/os-release, else /usr/lib/os-release); empty when both are absent."""
    for candidate in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            return parse_os_release(root.join(candidate).read_text(errors="replace"))
        except OSError:
            continue
    return {}


def match_family(os_release: dict[str, str]) -> Family | None:
    """The family of an os-release: by ID, then by ID_LIKE in order; None when nothing matches."""
    by_id = {i: fam for fam in families() for i in fam.ids}
    candidates = [os_release.get("ID", "").lower()] + os_release.get("ID_LIKE", "").lower().split()
    for c in candidates:
        if c in by_id:
            return by_id[c]
    return None


def detect_distro(root: Root) -> Distro:
    """The distro below ``root``; its family is None when os-release is absent or unknown."""
    rel = read_os_release(root)
    return Distro(
        id=rel.get("ID", ""),
        id_like=tuple(rel.get("ID_LIKE", "").split()),
        version_id=rel.get("VERSION_ID", ""),
        pretty_name=rel.get("PRETTY_NAME") or rel.get("NAME") or rel.get("ID", ""),
        family=match_family(rel),
    )


def read_dmi(root: Root) -> dict[str, str]:
    """DMI strings of ``root`` (/sys/class/dmi/id); empty when the machine has no DMI (or hides it)."""
    base = root.join("/sys/class/dmi/id")
    out = {}
    for name in DMI_FIELDS:
        try:
            value = (base / name).read_text(errors="replace").strip()
        except OSError:
            continue
        if value:
            out[name] = value
    return out


def match_cloud(dmi: dict[str, str]) -> Cloud | None:
    """The first cloud of the table whose DMI prefixes match; None when no cloud was detected."""
    for cloud in clouds():
        for fieldname, prefixes in cloud.match.items():
            value = dmi.get(fieldname, "").lower()
            if value and any(value.startswith(p.lower()) for p in prefixes):
                return cloud
    return None


def detect(root: Root = HOST) -> Platform:
    """Distro and cloud of the machine below ``root``."""
    dmi = read_dmi(root)
    return Platform(root=root, distro=detect_distro(root), cloud=match_cloud(dmi), dmi=dmi)
