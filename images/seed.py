"""NoCloud seed images: the `cidata` ISO that cloud-init (and the test guest) reads.

The layout is the one `cloud-localds` / `genisoimage -volid cidata -joliet -rock`
produce: an ISO9660 volume labelled `cidata` whose root directory holds
`meta-data`, `user-data` and optionally `network-config`, visible under those
names through Rock Ridge and Joliet.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import tempfile
from dataclasses import dataclass

import pycdlib

from agent.protocol import CloudInitSeed

VOLUME_ID = "cidata"


@dataclass(frozen=True)
class SeedFile:
    """One file of the seed: its Rock Ridge/Joliet name, its ISO9660 8.3 name, its bytes."""

    name: str
    iso_name: str
    data: bytes


def _yaml_str(value: str) -> str:
    """Return `value` as a YAML double-quoted scalar.

    JSON string syntax (without ASCII escaping) is valid YAML, so a value that
    looks like a number, a boolean or a date still reads back as the same string.
    """
    return json.dumps(value, ensure_ascii=False)


def render_meta_data(seed: CloudInitSeed) -> str:
    """Return the NoCloud `meta-data` document (YAML) for `seed`: its instance id, host
    name and, when there are any, the default user's SSH keys (`public-keys`)."""
    text = (
        f"instance-id: {_yaml_str(seed.instance_id)}\n"
        f"local-hostname: {_yaml_str(seed.hostname)}\n"
    )
    if seed.public_keys:
        text += "public-keys:\n" + "".join(f"  - {_yaml_str(k)}\n" for k in seed.public_keys)
    return text


def render_vendor_data(seed: CloudInitSeed) -> str | None:
    """The NoCloud `vendor-data` (cloud-config) naming the default user, or None. The
    platform's defaults go there, not into user-data: cloud-init lets the user-data
    override them."""
    if seed.default_user is None:
        return None
    return f"#cloud-config\nuser:\n  name: {_yaml_str(seed.default_user)}\n"


def seed_files(seed: CloudInitSeed, network_config: str | None = None) -> list[SeedFile]:
    """Return the files a seed for `seed` holds, in the order they are written.

    `network-config` is included only when `network_config` is not None.
    """
    files = [
        SeedFile("meta-data", "/META_DAT.;1", render_meta_data(seed).encode()),
        SeedFile("user-data", "/USER_DAT.;1", seed.user_data.encode()),
    ]
    vendor = render_vendor_data(seed)
    if vendor is not None:
        files.append(SeedFile("vendor-data", "/VENDOR_D.;1", vendor.encode()))
    if network_config is not None:
        files.append(SeedFile("network-config", "/NETWORK_.;1", network_config.encode()))
    return files


def _new_iso(files: list[SeedFile]) -> pycdlib.PyCdlib:
    """Return an open, in-memory pycdlib image holding `files` under volume id `cidata`."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=1, vol_ident=VOLUME_ID, joliet=3, rock_ridge="1.09")
    for f in files:
        iso.add_fp(
            io.BytesIO(f.data),
            len(f.data),
            iso_path=f.iso_name,
            rr_name=f.name,
            joliet_path="/" + f.name,
            file_mode=0o100444,
        )
    return iso


MIN_SEED_BYTES = 1024 * 1024


def build_nocloud_seed(
    seed: CloudInitSeed, dest: pathlib.Path, *, network_config: str | None = None
) -> None:
    """Write a NoCloud seed ISO for `seed` to `dest`.

    The ISO (volume id `cidata`, ISO9660 + Joliet + Rock Ridge) holds `meta-data`
    (`instance-id`, `local-hostname`, `public-keys`), `user-data` (verbatim, UTF-8),
    `vendor-data` when the seed names a default user and, when `network_config` is
    given, `network-config` (verbatim, UTF-8).

    After success `dest` is the complete seed (replacing any previous file there,
    atomically: readers see the old or the new file, never a partial one). After
    failure (an exception) `dest` is as it was before the call and no temporary
    file is left in its directory. `dest`'s directory must exist.
    """
    iso = _new_iso(seed_files(seed, network_config))
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        tmp = pathlib.Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                iso.write_fp(out)
                # sparse padding: filesystem probes (busybox findfs/volume_id) read past a tiny
                # ISO's end and give up on the read error, so the seed would not be found
                if out.tell() < MIN_SEED_BYTES:
                    out.truncate(MIN_SEED_BYTES)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    finally:
        iso.close()
