"""What a VM's creator gives its guest, checked before anything is made: SSH public
keys for the default user, and cloud-init user-data.

Each check raises ValueError with the problem in words (pydantic turns it into a 422
naming the field), so a key that is not one, or cloud-config that cloud-init would
reject, is refused at create time instead of leaving a VM nobody can log in to.
"""

from __future__ import annotations

import yaml

from controller.fleet.keys import USER_KEY_TYPES, HostKeyError, parse_public_key

MAX_KEY_LINE = 16384  # an RSA-16384 public key with a long comment fits
USER_DATA_BYTES = 64 * 1024  # cloud-init's NoCloud seed is no place for large payloads


def check_ssh_keys(keys: list[str]) -> list[str]:
    """The keys, each stripped; ValueError naming the first that is not an OpenSSH public
    key line ("TYPE BASE64 [comment]", no authorized_keys options)."""
    checked = []
    for i, key in enumerate(keys):
        line = key.strip()
        if not line or "\n" in line or len(line) > MAX_KEY_LINE:
            raise ValueError(f"ssh key {i + 1}: one line of at most {MAX_KEY_LINE} characters "
                             "(a public key file's content)")
        try:
            parse_public_key(line, USER_KEY_TYPES)
        except HostKeyError as e:
            shown = line[:40] + ("…" if len(line) > 40 else "")
            raise ValueError(f"ssh key {i + 1} ({shown!r}): {e}; give the .pub file, never "
                             "the private key") from e
        checked.append(line)
    return checked


def check_user_data(text: str) -> str:
    """`text` unchanged; ValueError when it is over the seed's limit, or when it says it is
    cloud-config (#cloud-config) and is not a YAML mapping. Other formats (scripts,
    #include, MIME multipart) go to cloud-init as they are."""
    size = len(text.encode())
    if size > USER_DATA_BYTES:
        raise ValueError(f"user-data is {size} bytes; a VM's seed takes at most "
                         f"{USER_DATA_BYTES} (fetch larger payloads from the guest)")
    if not text.lstrip().startswith("#cloud-config"):
        return text
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(f"user-data is #cloud-config but not valid YAML{where}: "
                         f"{getattr(e, 'problem', None) or e}") from e
    if data is not None and not isinstance(data, dict):
        raise ValueError("user-data is #cloud-config but its YAML is not a mapping of "
                         f"keys (it is a {type(data).__name__})")
    return text
