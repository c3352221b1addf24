"""Human- and machine-readable views of a module, kept apart from parsing.

:func:`modinfo_fields` lists what kmod's ``kmod_module_get_info()`` lists
(the ``.modinfo`` strings, then the signature fields); :func:`format_modinfo`
prints them byte for byte as kmod's ``modinfo`` tool does; :func:`to_json`
gives every field plus what modinfo does not show.
"""

from __future__ import annotations

import operator
from functools import lru_cache
from typing import Any

from kmodkit.modfile.module import ModuleFile
from kmodkit.modfile.signature import (
    HASH_NAMES,
    ID_TYPE_NAMES,
    IdType,
    trailer_is_kmod_valid,
)

Field = tuple[bytes, bytes]


def hex_wrapped(data: bytes) -> bytes:
    """Bytes as kmod shows keys and signatures: ``AB:CD:...``, a line break and two tabs every 20 bytes."""
    text = data.hex(":").upper().encode()
    if len(data) <= 20:
        return text
    # each byte is "XX:" (3 characters); break after every 20th byte's colon
    return b"\n\t\t".join([text[i:i + 60] for i in range(0, len(text), 60)])


# a tree is signed by a handful of keys: their sig_key lines are made once
_hex_key = lru_cache(maxsize=64)(hex_wrapped)


def signature_fields(mod: ModuleFile) -> list[Field]:
    """The ``sig_*`` fields kmod appends for a signed module, ``[]`` when it shows none.

    kmod parses the PKCS#7 with OpenSSL's PKCS7 type, which has no place for a
    subjectKeyIdentifier signer: modules signed with sign-file's ``-k`` show no
    signature fields at all.  Garbage PKCS#7 and a malformed trailer likewise show none.
    """
    if mod.signature_problem is not None:
        return []
    t = mod.trailer
    if t is None or not trailer_is_kmod_valid(t):
        return []
    id_name = ID_TYPE_NAMES[IdType(t.id_type)].encode()
    if t.id_type == IdType.PKCS7:
        try:
            signer = mod.pkcs7
        except Exception:
            return []
        if signer is None or signer.key_id is not None:
            return []
        hash_name = (signer.hash_name or "unknown").encode()
        cn = (signer.issuer_cn or "").encode()
        return [
            (b"sig_id", id_name),
            (b"signer", cn),
            (b"sig_key", _hex_key(signer.key_identifier)),
            (b"sig_hashalgo", hash_name),
            (b"signature", hex_wrapped(signer.signature)),
        ]
    # legacy (pre-PKCS#7) trailers carry signer, key id and signature in the clear
    start = t.content_len
    signer_b = bytes(mod.data[start:start + t.signer_len])
    key_id = bytes(mod.data[start + t.signer_len:start + t.signer_len + t.key_id_len])
    sig = bytes(mod.data[start + t.signer_len + t.key_id_len:start + t.signer_len + t.key_id_len + t.sig_len])
    return [
        (b"sig_id", id_name),
        (b"signer", signer_b),
        (b"sig_key", hex_wrapped(key_id)),
        (b"sig_hashalgo", HASH_NAMES[t.hash].encode()),
        (b"signature", hex_wrapped(sig)),
    ]


def modinfo_fields(mod: ModuleFile) -> list[Field]:
    """Every field modinfo would list for ``mod``, in its order."""
    fields: list[Field] = [(key, value) for key, _sep, value in map(_split_field, mod.modinfo_raw)]
    fields.extend(signature_fields(mod))
    return fields


_split_field = operator.methodcaller("partition", b"=")


def format_modinfo(
    filename: bytes,
    fields: list[Field],
    field: str | None = None,
    separator: bytes = b"\n",
    builtin_name: bytes | None = None,
) -> bytes:
    """Print one module exactly as kmod's modinfo does (tools/modinfo.c, ``modinfo_do``).

    ``field`` is ``-F`` (``"parm"`` has its own merged form); ``separator`` is
    ``b"\\0"`` for ``-0``; ``builtin_name`` is set for built-in modules, whose
    filename shows as ``(builtin)``.
    """
    out: list[bytes] = []
    if builtin_name is not None:
        if field is None:
            out.append(_line(b"name:", builtin_name, separator))
        elif field == "name":
            out.append(builtin_name + separator)
        filename = b"(builtin)"
    if field == "filename":
        out.append(filename + separator)
        return b"".join(out)
    if field is None:
        out.append(_line(b"filename:", filename, separator))
    if field == "parm":
        out.extend(_params(fields, separator, with_key=False))
        return b"".join(out)
    if field is not None:
        fkey = field.encode()
        out.extend([value + separator for key, value in fields if key == fkey])
        return b"".join(out)
    # one comprehension per kind of line: this runs for every module of a tree
    if separator == b"\0":
        out.extend([key + b"=" + value + separator for key, value in fields if key not in _PARAM_KEYS])
    else:
        col = _KEY_COLUMN.get
        out.extend([(col(key) or _key_column(key)) + value + separator
                    for key, value in fields if key not in _PARAM_KEYS])
    out.extend(_params(fields, separator, with_key=True))
    return b"".join(out)


_PARAM_KEYS = frozenset((b"parm", b"parmtype"))
# "key:" and its padding, by key (a tree uses a few dozen keys): printf("%s:%-*s", key,
# 15 - len(key), "") pads to 16 columns, and a negative width pads the other way
_KEY_COLUMN: dict[bytes, bytes] = {}


def _key_column(key: bytes) -> bytes:
    text = key + b":" + b" " * abs(15 - len(key))
    if len(_KEY_COLUMN) < 4096:  # garbage input must not grow it without end
        _KEY_COLUMN[key] = text
    return text


def _line(label: bytes, value: bytes, sep: bytes) -> bytes:
    return label.ljust(16) + value + sep


def _params(fields: list[Field], sep: bytes, with_key: bool) -> list[bytes]:
    # kmod prepends each new parameter to a list: they print newest first
    order: list[bytes] = []
    desc: dict[bytes, bytes] = {}
    types: dict[bytes, bytes] = {}
    for key, value in fields:
        if key not in (b"parm", b"parmtype"):
            continue
        name, colon, rest = value.partition(b":")
        if not colon:
            continue  # kmod reports 'missing ':'' on stderr and skips it
        if name not in desc and name not in types:
            order.append(name)
        (desc if key == b"parm" else types)[name] = rest
    lines = []
    for name in reversed(order):
        d, t = desc.get(name), types.get(name)
        if d is None:
            body = name + (b":" if with_key else b": (") + (t or b"") + (b"" if with_key else b")")
        elif t is not None:
            body = name + b":" + d + b" (" + t + b")"
        else:
            body = name + b":" + d
        lines.append((b"parm:".ljust(16) + body if with_key else body) + sep)
    return lines


def to_json(mod: ModuleFile, filename: str | None = None) -> dict[str, Any]:
    """Everything about ``mod`` as plain JSON data: modinfo fields and what modinfo does not show."""
    fields: dict[str, Any] = {}
    for key, value in mod.modinfo:
        if key in fields:
            prev = fields[key]
            fields[key] = prev + [value] if isinstance(prev, list) else [prev, value]
        else:
            fields[key] = value
    elf = mod.elf
    return {
        "filename": filename or mod.path,
        "name": mod.get("name") or mod.name,
        "compression": mod.compression.value,
        "size": len(mod.data),
        "file_size": mod.file_size,
        "machine": elf.machine_name,
        "elf_class": 64 if elf.is64 else 32,
        "modinfo": fields,
        "parameters": [
            {"name": p.name, "type": p.type, "description": p.description} for p in mod.parameters
        ],
        "signature": signature_json(mod),
        "build_id": mod.build_id,
        "exports": [
            {"name": e.name, "gpl_only": e.gpl_only, "namespace": e.namespace} for e in mod.exported_symbols()
        ],
        "undefined": mod.undefined_symbols(),
        "versions": {name: f"0x{crc:08x}" for name, crc in mod.versions()},
        "sections": [
            {"name": n, "type": t, "flags": f, "offset": o, "size": sz} for n, t, f, o, sz in elf.section_rows()
        ],
        "elf_problems": elf.load_problems(),
    }


def signature_json(mod: ModuleFile) -> dict[str, Any] | None:
    """The parsed signature block as JSON data, or None when the module is unsigned.

    A malformed trailer (which kmod shows as no signature) comes back as ``{"error": why}``.
    """
    problem = mod.signature_problem
    if problem is not None:
        return {"trailer_well_formed": False, "error": problem}
    t = mod.trailer
    if t is None:
        return None
    out: dict[str, Any] = {
        "id_type": ID_TYPE_NAMES.get(IdType(t.id_type), str(t.id_type)) if t.id_type < 3 else str(t.id_type),
        "trailer_well_formed": trailer_is_kmod_valid(t),
        "signed_length": t.content_len,
        "signature_length": t.sig_len,
    }
    if t.id_type == IdType.PKCS7:
        try:
            s = mod.pkcs7
        except Exception as exc:
            out["error"] = str(exc)
            out["trailer_well_formed"] = False
            return out
        assert s is not None
        out.update(
            {
                "form": "key-id" if s.key_id is not None else "issuer-and-serial",
                "signer": s.issuer_cn,
                "issuer": s.issuer,
                "serial": None if s.serial is None else format(s.serial, "x"),
                "key_id": s.key_identifier.hex(),
                "hash": s.hash_name,
                "digest_oid": s.digest_oid,
                "signature_oid": s.signature_oid,
                "signed_attributes": s.signed_attrs is not None,
                "pkcs7_length": t.sig_len,
            }
        )
    return out
