"""The installer's answers: what the operator decided for this node, read strictly.

Two sources, either or both: the kernel command line (`vauban.<key>=<value>`,
network keys as `vauban.network.mode=static`, lists comma-separated) and the TOML
answer file `vauban-answers.toml` at the root of a filesystem labelled VAUBAN (or
the file named by `vauban.answers=/path`). The same key given with two different
values is a contradiction. Every problem found (contradiction, unknown key, missing
answer, bad value) is gathered into one AnswersError, so the operator fixes the
answers once, and nothing is written to any disk before they are all right.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import tempfile
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from appliance.cmd import CommandError, Runner, run
from hardware.qualify import available_profiles

ANSWER_FILE = "vauban-answers.toml"
LABEL = "VAUBAN"
ZONEINFO = Path("/usr/share/zoneinfo")
# keys of the command line that steer the installer rather than describe the node
CONTROL_KEYS = ("install", "answers")

HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
MAC = re.compile(r"^mac:([0-9a-f]{2}:){5}[0-9a-f]{2}$")
SSH_KEY = re.compile(r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)|sk-[a-z0-9@.-]+) "
                     r"[A-Za-z0-9+/]+={0,3}( [^\n]*)?$")
TZ_NAME = re.compile(r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$")
NTP_SERVER = re.compile(r"^[A-Za-z0-9.:-]{1,253}$")

# how a command-line string becomes the value the file would hold
BOOL_KEYS = {"wipe", "metrics_tls"}
INT_KEYS = {"network.vlan", "metrics_port"}
LIST_KEYS = {"network.dns", "root_ssh_keys", "ntp_servers"}
# never printed back, not even in a refusal
SECRET_KEYS = {"join_token"}


class AnswersError(Exception):
    """The answers cannot be used; `problems` lists each one in words."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class NetworkAnswers(Strict):
    """The management network. `interface`: a name (`eno1`), `mac:aa:bb:..`, or `auto`
    (the first physical NIC with carrier when the installer runs)."""

    mode: Literal["dhcp", "static"] = "dhcp"
    interface: str = "auto"
    address: str | None = Field(None, description="CIDR, static only", examples=["10.0.0.21/24"])
    gateway: str | None = Field(None, description="static only", examples=["10.0.0.1"])
    dns: list[str] = Field(default_factory=list, examples=[["10.0.0.53"]])
    vlan: int | None = Field(None, ge=1, le=4094, description="802.1Q tag of the network")

    @field_validator("interface")
    @classmethod
    def _interface(cls, v: str) -> str:
        if v == "auto" or MAC.match(v.lower()) or IFNAME.match(v):
            return v.lower() if v.lower().startswith("mac:") else v
        raise ValueError(f"{v!r} is not an interface name, 'mac:aa:bb:cc:dd:ee:ff' or 'auto'")

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if "/" not in v:
            raise ValueError(f"{v!r} has no prefix length (write it as 10.0.0.21/24)")
        try:
            iface = ipaddress.ip_interface(v)
        except ValueError as e:
            raise ValueError(f"{v!r} is not an address with prefix length: {e}") from e
        if iface.ip == iface.network.network_address and iface.network.prefixlen < 31:
            raise ValueError(f"{v!r} is the network's own address, not a host's")
        return v

    @field_validator("gateway")
    @classmethod
    def _gateway(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                ipaddress.ip_address(v)
            except ValueError as e:
                raise ValueError(f"{v!r} is not an IP address") from e
        return v

    @field_validator("dns")
    @classmethod
    def _dns(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if not _is_ip(s)]
        if bad:
            raise ValueError(f"not IP addresses: {', '.join(bad)}")
        return v

    @model_validator(mode="after")
    def _mode(self) -> NetworkAnswers:
        if self.mode == "static":
            if self.address is None:
                raise ValueError("mode static needs an address (CIDR)")
            if self.gateway is not None:
                net = ipaddress.ip_interface(self.address).network
                if ipaddress.ip_address(self.gateway) not in net:
                    raise ValueError(f"gateway {self.gateway} is not in {net}")
        elif self.address is not None or self.gateway is not None:
            raise ValueError("address and gateway are for mode static; mode is dhcp")
        return self


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


class Answers(Strict):
    """Everything the installer needs to know; see docs/install.md for each key."""

    controller: str = Field(examples=["https://10.0.0.1:8443"])
    join_token: str = Field(min_length=8, max_length=512)
    ca_sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    hostname: str
    disk: str = Field("auto", examples=["auto", "/dev/disk/by-id/nvme-X", "serial:S4EW",
                                        "model:SAMSUNG", "size>=400G"])
    wipe: bool = False
    network: NetworkAnswers = Field(default_factory=lambda: NetworkAnswers.model_validate({}))
    root_ssh_keys: list[str] = Field(default_factory=list)
    timezone: str = "UTC"
    hardware_profile: str = "compute"
    ntp_servers: list[str] = Field(default_factory=list)
    # the agent's Prometheus listener (docs/metrics.md); unset: the agent's defaults (off)
    metrics_address: str | None = None
    metrics_port: int | None = Field(None, ge=1, le=65535)
    metrics_tls: bool | None = None

    @field_validator("controller")
    @classmethod
    def _controller(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"{v!r} is not an https:// URL (the controller speaks TLS only)")
        return v.rstrip("/")

    @field_validator("join_token")
    @classmethod
    def _token(cls, v: str) -> str:
        if any(c.isspace() for c in v):
            raise ValueError("the join token holds white space (copy it whole, on one line)")
        return v

    @field_validator("ca_sha256")
    @classmethod
    def _ca(cls, v: str) -> str:
        return v.lower()

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, v: str) -> str:
        if not HOSTNAME.match(v):
            raise ValueError(f"{v!r} is not a host name (lower-case letters, digits and '-', "
                             "at most 63, not starting or ending with '-')")
        return v

    @field_validator("disk")
    @classmethod
    def _disk(cls, v: str) -> str:
        from appliance.disks import DiskError, parse_rule

        try:
            parse_rule(v)
        except DiskError as e:
            raise ValueError(str(e)) from e
        return v

    @field_validator("root_ssh_keys")
    @classmethod
    def _keys(cls, v: list[str]) -> list[str]:
        bad = [k[:40] for k in v if not SSH_KEY.match(k.strip())]
        if bad:
            raise ValueError(f"not SSH public keys: {', '.join(repr(b) for b in bad)}")
        return [k.strip() for k in v]

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str, info: ValidationInfo) -> str:
        zoneinfo = Path((info.context or {}).get("zoneinfo", ZONEINFO))
        known = v in ("UTC", "Etc/UTC") if not zoneinfo.is_dir() else (
            TZ_NAME.match(v) is not None and ".." not in v and (zoneinfo / v).is_file())
        if not known:
            raise ValueError(f"{v!r} is not a time zone name (e.g. Europe/Paris, UTC)")
        return v

    @field_validator("hardware_profile")
    @classmethod
    def _profile(cls, v: str) -> str:
        known = available_profiles()
        if v not in known:
            raise ValueError(f"{v!r} is not a hardware profile ({', '.join(known)})")
        return v

    @field_validator("metrics_address")
    @classmethod
    def _metrics_address(cls, v: str | None) -> str | None:
        if v is None or v == "localhost":
            return v
        try:
            return str(ipaddress.ip_address(v))
        except ValueError:
            raise ValueError(f"{v!r} is not an IP address (the node's address on the "
                             "management network, or 127.0.0.1)") from None

    @model_validator(mode="after")
    def _metrics_listener(self) -> Answers:
        from agent.metrics import is_loopback

        if self.metrics_address is None and (self.metrics_port is not None
                                             or self.metrics_tls is not None):
            raise ValueError("metrics_port and metrics_tls need metrics_address (without it "
                             "the agent serves no metrics)")
        if self.metrics_tls is False and self.metrics_address is not None \
                and not is_loopback(self.metrics_address):
            raise ValueError(f"metrics_tls = false on {self.metrics_address}: plain HTTP is "
                             "served on a loopback address only")
        return self

    def agent_settings(self) -> dict[str, str | int | bool]:
        """The keys of the agent's settings file these answers set."""
        given = {"hardware_profile": self.hardware_profile,
                 "metrics_address": self.metrics_address, "metrics_port": self.metrics_port,
                 "metrics_tls": self.metrics_tls}
        return {k: v for k, v in given.items() if v is not None}

    @field_validator("ntp_servers")
    @classmethod
    def _ntp(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if not NTP_SERVER.match(s)]
        if bad:
            raise ValueError(f"not host names or addresses: {', '.join(bad)}")
        return v


def parse_cmdline(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """The `vauban.*` keys of a kernel command line, as (answers, control) with the
    prefix removed; `control` holds `install` and `answers`. A key without a value
    counts as "" (so `vauban.install` alone reads as present)."""
    answers: dict[str, str] = {}
    control: dict[str, str] = {}
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    for word in words:
        if not word.startswith("vauban."):
            continue
        key, _, value = word[len("vauban."):].partition("=")
        (control if key in CONTROL_KEYS else answers)[key] = value
    return answers, control


def _typed(key: str, value: str) -> Any:
    """The command line's string for `key` as the TOML file would give it.
    ValueError when it cannot be (the message says what was expected)."""
    if key in BOOL_KEYS:
        low = value.lower()
        if low in ("true", "yes", "1"):
            return True
        if low in ("false", "no", "0"):
            return False
        raise ValueError(f"{value!r} is not true or false")
    if key in INT_KEYS:
        if not value.isdigit():
            raise ValueError(f"{value!r} is not a whole number")
        return int(value)
    if key in LIST_KEYS:
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key == "network" and not prefix and isinstance(value, dict):
            flat.update(_flatten(value, "network."))
        else:
            flat[prefix + key] = value
    return flat


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        if key.startswith("network."):
            nested.setdefault("network", {})[key[len("network."):]] = value
        else:
            nested[key] = value
    return nested


def _words(err: Any) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "missing":
        return f"{loc}: missing (required)"
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown key"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


def merge(cmdline: dict[str, str], file_data: dict[str, Any] | None,
          zoneinfo: Path = ZONEINFO) -> Answers:
    """One Answers from the command line's keys and the answer file's content.

    Raises AnswersError listing every contradiction, unknown key, missing answer and
    bad value at once; nothing else happens either way."""
    problems: list[str] = []
    flat = _flatten(file_data or {})
    for key, text in cmdline.items():
        try:
            value = _typed(key, text)
        except ValueError as e:
            problems.append(f"{key}: {e} (kernel command line)")
            continue
        if key in flat and flat[key] != value:
            if key in SECRET_KEYS:
                problems.append(f"{key}: contradiction: the kernel command line and the answer "
                                "file give different values (not shown: a secret)")
            else:
                problems.append(f"{key}: contradiction: the kernel command line says "
                                f"{text!r}, the answer file says {flat[key]!r}")
            continue
        flat[key] = value
    try:
        answers = Answers.model_validate(_nest(flat), context={"zoneinfo": str(zoneinfo)})
    except ValidationError as e:
        problems.extend(_words(err) for err in e.errors())
        raise AnswersError(problems) from None
    if problems:
        raise AnswersError(problems)
    return answers


def parse_file(text: str, name: str) -> dict[str, Any]:
    """The answer file's content. AnswersError when it is not TOML."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise AnswersError([f"{name} is not valid TOML: {e}"]) from e


def read_labelled_file(runner: Runner = run) -> tuple[str, str] | None:
    """(device, text) of `vauban-answers.toml` on the filesystem labelled VAUBAN, which
    is mounted read-only for the read and unmounted after; None when no filesystem
    bears the label. AnswersError when the medium has no answer file or cannot be
    mounted (the operator gave one: silently going interactive would mislead)."""
    try:
        device = runner(["blkid", "-L", LABEL]).strip()
    except CommandError:
        return None
    if not device:
        return None
    mountpoint = Path(tempfile.mkdtemp(prefix="vauban-answers-", dir="/run"))
    try:
        try:
            runner(["mount", "-o", "ro", device, str(mountpoint)])
        except CommandError as e:
            raise AnswersError([f"the answers medium {device} (label {LABEL}) cannot be "
                                f"mounted: {e}"]) from e
        try:
            path = mountpoint / ANSWER_FILE
            if not path.is_file():
                raise AnswersError([f"the medium {device} labelled {LABEL} has no "
                                    f"{ANSWER_FILE} at its root"])
            return device, path.read_text()
        finally:
            runner(["umount", str(mountpoint)])
    finally:
        mountpoint.rmdir()


def gather(cmdline_text: str, runner: Runner = run,
           zoneinfo: Path = ZONEINFO) -> tuple[str, Answers | None]:
    """(mode, answers) for this boot. mode: the value of `vauban.install` ("auto",
    "interactive", or "" when absent). answers: None when neither the command line nor
    any answer file gives a single answer (the installer then asks). AnswersError for
    answers given but unusable."""
    keys, control = parse_cmdline(cmdline_text)
    mode = control.get("install", "")
    file_data: dict[str, Any] | None = None
    if control.get("answers"):
        path = Path(control["answers"])
        try:
            file_data = parse_file(path.read_text(), str(path))
        except OSError as e:
            raise AnswersError([f"vauban.answers={path}: cannot read it: {e}"]) from e
    else:
        found = read_labelled_file(runner)
        if found is not None:
            file_data = parse_file(found[1], f"{ANSWER_FILE} on {found[0]}")
    if not keys and file_data is None:
        return mode, None
    return mode, merge(keys, file_data, zoneinfo)
