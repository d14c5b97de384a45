"""Ceph secrets in libvirt: the cephx key an RBD disk is opened with, held by libvirtd.

A secret is found by its *usage* (the name an RBD disk's <auth> refers to) and
defined `ephemeral='yes' private='yes'`: libvirtd keeps the value only in its
memory (nothing under /etc/libvirt/secrets or /run/libvirt/secrets holds it) and
refuses to hand it back through the API. The price of `ephemeral`: the secret
vanishes when libvirtd restarts. Callers therefore ensure it again before each
define, start or hot-plug of a VM with an RBD disk; running VMs are unaffected,
since QEMU received the key when it opened the image.

The key never appears in a log line or an exception message of this module.
"""

from __future__ import annotations

import base64
import binascii
import logging
import xml.etree.ElementTree as ET

import libvirt

from agent.drivers.hypervisor.base import HypervisorError
from agent.drivers.hypervisor.libvirt.host import Host

log = logging.getLogger(__name__)

DESCRIPTION = "Vauban: cephx key for RBD disks (in libvirtd's memory only)"


def secret_xml(usage: str) -> str:
    """The <secret> definition of an ephemeral, private ceph secret for `usage` (no value)."""
    root = ET.Element("secret", {"ephemeral": "yes", "private": "yes"})
    ET.SubElement(root, "description").text = DESCRIPTION
    usage_el = ET.SubElement(root, "usage", {"type": "ceph"})
    ET.SubElement(usage_el, "name").text = usage
    return ET.tostring(root, encoding="unicode")


def decode_key(key: str) -> bytes:
    """The raw bytes of a cephx key as `ceph auth get-key` prints it (base64).

    libvirt stores a ceph secret's value as raw bytes and base64-encodes it again
    for QEMU. ValueError (not naming the key) when `key` is not valid base64.
    """
    try:
        raw = base64.b64decode(key.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the cephx key is not valid base64") from None
    if not raw:
        raise ValueError("the cephx key is empty")
    return raw


def _is_ephemeral_private(host: Host, secret: libvirt.virSecret, usage: str) -> bool:
    """Whether the secret is defined ephemeral='yes' private='yes'."""
    try:
        root = ET.fromstring(secret.XMLDesc(0))
    except libvirt.libvirtError as e:
        raise host.error(f"read ceph secret {usage!r}", e) from e
    return root.get("ephemeral") == "yes" and root.get("private") == "yes"


def ensure_ceph_secret(host: Host, usage: str, key: str) -> None:
    """Make libvirt hold an ephemeral, private ceph secret for `usage` whose value is `key`.

    After success the secret exists with that value: created if missing, its
    value replaced if it differed (a private value cannot be read back to
    compare, so it is set every time; for an ephemeral secret that touches only
    libvirtd's memory, and its UUID and definition stay the same). After failure
    a secret this call created is removed again; an existing one keeps its
    definition. A secret for `usage` that is not ephemeral and private (made by
    someone else) is left alone: HypervisorError.
    """
    if not usage:
        raise HypervisorError("a ceph secret needs a usage name")
    try:
        value = decode_key(key)
    except ValueError as e:
        raise HypervisorError(f"ceph secret {usage!r}: {e}") from None
    for _attempt in range(2):
        secret = _lookup(host, usage)
        created = secret is None
        if secret is None:
            try:
                secret = host.call(f"define ceph secret {usage!r}",
                                   lambda c: c.secretDefineXML(secret_xml(usage), 0))
            except HypervisorError:
                if _lookup(host, usage) is not None:
                    continue  # defined concurrently by another caller: set its value
                raise
        elif not _is_ephemeral_private(host, secret, usage):
            raise HypervisorError(f"a libvirt secret for usage {usage!r} exists but is not "
                                  "ephemeral and private; not using it")
        _set_value(host, secret, usage, value, undefine_on_failure=created)
        log.info("ceph secret %r %s", usage, "defined" if created else "value set")
        return
    raise HypervisorError(f"ceph secret {usage!r} kept changing under us", retryable=True)


def _lookup(host: Host, usage: str) -> libvirt.virSecret | None:
    """The ceph secret for `usage`, or None when libvirt holds none."""
    def find(conn: libvirt.virConnect) -> libvirt.virSecret | None:
        try:
            return conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_CEPH, usage)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_SECRET:
                return None
            raise

    return host.call(f"look up ceph secret {usage!r}", find, idempotent=True)


def _set_value(host: Host, secret: libvirt.virSecret, usage: str, value: bytes, *,
               undefine_on_failure: bool) -> None:
    """Set the secret's value; on failure undefine it if we had just created it."""
    try:
        # libvirt's message for a failed setValue never includes the value.
        host.call(f"set value of ceph secret {usage!r}", lambda _c: secret.setValue(value, 0))
    except HypervisorError:
        if undefine_on_failure:
            try:
                secret.undefine()
            except libvirt.libvirtError:
                log.warning("could not remove ceph secret %r after failing to set it", usage)
        raise


def remove_ceph_secret(host: Host, usage: str) -> None:
    """Undefine the ceph secret for `usage`; afterwards libvirt holds none. No-op if absent."""
    secret = _lookup(host, usage)
    if secret is None:
        return
    try:
        secret.undefine()
    except libvirt.libvirtError as e:
        if e.get_error_code() != libvirt.VIR_ERR_NO_SECRET:
            raise host.error(f"undefine ceph secret {usage!r}", e) from e
