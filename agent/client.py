"""The agent's side of the agent API: mutual TLS with the node certificate."""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
import simple_websocket

from agent.config import AgentConfig, NodeIdentity
from agent.protocol import (
    NODE_REMOVED,
    PROTOCOL_HEADER,
    PROTOCOL_MISMATCH,
    PROTOCOL_VERSION,
    WRONG_AGENT,
    CertificateIssued,
    CertificateRenewal,
    ConsoleRequests,
    DesiredState,
    HypervisorCertificateIssued,
    HypervisorCertificateRequest,
    NodeStatus,
    StorageSettings,
    XapiSettings,
    pace_from_headers,
    protocol_from_header,
)

CHUNK = 1024 * 1024


class _PinnedSession(requests.Session):
    """A session that always verifies against the region CA.

    requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE override a session's `verify`;
    passing it on every request keeps the region CA in charge.
    """

    def __init__(self, ca_file: str) -> None:
        super().__init__()
        self.ca_file = ca_file

    def request(self, method: str | bytes, url: str | bytes, *args: Any,
                **kwargs: Any) -> requests.Response:
        kwargs["verify"] = self.ca_file
        return super().request(method, url, *args, **kwargs)


class ControllerUnavailable(Exception):
    """The controller could not be reached or answered with an error; retry later."""


class Refused(Exception):
    """The controller refuses this agent for good: retrying cannot help. The agent stops,
    saying why (the message)."""


class ProtocolMismatch(Refused):
    """The controller speaks another wire protocol: an upgrade can help.

    The message says which versions and which side to upgrade."""


class NodeRemoved(Refused):
    """This node was removed from the region: its certificate is refused. The message is
    the controller's: who removed it, when, and how to bring the machine back."""


T = TypeVar("T")
log = logging.getLogger(__name__)


def keep_asking(what: str, stopping: threading.Event, ask: Callable[[], T],
                take: Callable[[T], None], on_refused: Callable[[Refused], None],
                retry_delay: Callable[[int], float]) -> None:
    """Ask the controller (`ask`, a long-poll) until `stopping` is set, giving each answer
    to `take`. An unavailable controller is asked again after `retry_delay(failures in a
    row)`, logged with `what` was asked; a refusal goes to `on_refused` and ends the loop
    (retrying cannot help)."""
    failures = 0
    while not stopping.is_set():
        try:
            answer = ask()
        except Refused as e:
            on_refused(e)
            return
        except ControllerUnavailable as e:
            log.warning("%s unavailable: %s", what, e)
            failures += 1
            stopping.wait(retry_delay(failures))
            continue
        failures = 0
        take(answer)


def ask_until_answered(what: str, stopping: threading.Event, ask: Callable[[], T],
                       max_backoff: float = 10.0) -> T | None:
    """`ask`'s answer, asked again (backing off up to `max_backoff` s, logged with `what`
    was asked) while the controller is unavailable; None once `stopping` is set first.
    A refusal is raised: retrying cannot help."""
    backoff = 0.5
    while not stopping.is_set():
        try:
            return ask()
        except ControllerUnavailable as e:
            log.warning("%s unavailable: %s", what, e)
            stopping.wait(backoff)
            backoff = min(backoff * 2, max_backoff)
    return None


def protocol_mismatch(r: requests.Response) -> ProtocolMismatch | None:
    """The mismatch an answer shows (a refusal, or another version in its header), or None."""
    try:
        body = r.json() if r.status_code == 409 else None
    except ValueError:
        body = None
    if isinstance(body, dict) and str(body.get("type", "")).endswith("/" + PROTOCOL_MISMATCH):
        return ProtocolMismatch(str(body.get("detail")))
    raw = r.headers.get(PROTOCOL_HEADER)
    theirs = protocol_from_header(raw)
    if theirs is None:
        return ProtocolMismatch(f"the controller sent {PROTOCOL_HEADER}: {(raw or '')[:40]!r}, "
                                "not a protocol version")
    if theirs != PROTOCOL_VERSION:
        fix = "upgrade the agent" if PROTOCOL_VERSION < theirs else "upgrade the controller"
        return ProtocolMismatch(f"agent speaks protocol {PROTOCOL_VERSION}, the controller "
                                f"speaks {theirs}; {fix}")
    return None


class ControllerClient:
    """Speaks to /agent/v1 as this node, saying its protocol version on every call; every
    call raises ControllerUnavailable on failure, ProtocolMismatch for another version,
    NodeRemoved once the node is no longer in the region.

    `report_interval_s` and `poll_wait_s` are the report interval and long-poll wait the
    controller last named (None before any answer named them)."""

    def __init__(self, config: AgentConfig, identity: NodeIdentity) -> None:
        self.identity = identity
        self.config = config
        self.base = identity.controller_url.rstrip("/") + "/agent/v1"
        self.http = self._session()
        self.report_interval_s: float | None = None
        self.poll_wait_s: float | None = None

    def _session(self) -> _PinnedSession:
        http = _PinnedSession(str(self.config.ca_path))
        http.cert = (str(self.config.cert_path), str(self.config.key_path))
        http.headers[PROTOCOL_HEADER] = str(PROTOCOL_VERSION)
        return http

    def reconnect(self) -> None:
        """Use the key and certificate on disk from the next request on: the open
        connections (made with the previous pair) are closed once their request ends."""
        old, self.http = self.http, self._session()
        old.close()

    def renew_certificate(self, csr_pem: str) -> CertificateIssued:
        """A new certificate for the CSR's key, asked for with the current certificate."""
        try:
            r = self.http.post(self._node_url("certificate"),
                               data=CertificateRenewal(csr_pem=csr_pem).model_dump_json(),
                               headers={"Content-Type": "application/json"}, timeout=30)
        except requests.RequestException as e:
            raise ControllerUnavailable(str(e)) from e
        self._check(r)
        return CertificateIssued.model_validate_json(r.content)

    def hypervisor_certificate(self, csr_pem: str, migration_address: str,
                               role: str = "libvirt") -> HypervisorCertificateIssued:
        """The node's hypervisor certificate of `role` (libvirt, qemu) for the CSR's key,
        naming `migration_address`."""
        body = HypervisorCertificateRequest.model_validate(
            {"csr_pem": csr_pem, "migration_address": migration_address, "role": role})
        try:
            r = self.http.post(self._node_url("hypervisor-certificate"),
                               data=body.model_dump_json(),
                               headers={"Content-Type": "application/json"}, timeout=30)
        except requests.RequestException as e:
            raise ControllerUnavailable(str(e)) from e
        self._check(r)
        return HypervisorCertificateIssued.model_validate_json(r.content)

    def _node_url(self, suffix: str) -> str:
        return f"{self.base}/nodes/{self.identity.node_id}/{suffix}"

    def desired(self, after: int, wait: float) -> DesiredState | None:
        """The node's desired state once its generation exceeds `after`, or None when the
        controller ended the wait (at most `wait` s) with nothing newer."""
        try:
            r = self.http.get(self._node_url("desired"), params={"after": after, "wait": wait},
                              timeout=wait + 15)
        except requests.RequestException as e:
            raise ControllerUnavailable(str(e)) from e
        self._check(r)
        if r.status_code == 204:
            return None
        return DesiredState.model_validate_json(r.content)

    def console_requests(self, wait: float) -> ConsoleRequests:
        """The consoles users wait for on this node's VMs, once there are some or after at
        most `wait` s (then none)."""
        try:
            r = self.http.get(self._node_url("consoles"), params={"wait": wait},
                              timeout=wait + 15)
        except requests.RequestException as e:
            raise ControllerUnavailable(str(e)) from e
        self._check(r)
        return ConsoleRequests.model_validate_json(r.content)

    def dial_console(self, session_id: str, ping_s: float = 15.0) -> simple_websocket.Client:
        """The agent's leg of console `session_id`: a websocket to the controller, with this
        node's certificate, verified against the region CA. ControllerUnavailable when the
        controller cannot be reached or refuses it (the session ended, another node's)."""
        parts = urlsplit(self.base)
        scheme = "wss" if parts.scheme == "https" else "ws"
        url = f"{scheme}://{parts.netloc}{parts.path}/nodes/{self.identity.node_id}" \
              f"/consoles/{session_id}"
        context = ssl.create_default_context(cafile=str(self.config.ca_path))
        context.load_cert_chain(str(self.config.cert_path), str(self.config.key_path))
        try:
            return simple_websocket.Client.connect(
                url, headers={PROTOCOL_HEADER: str(PROTOCOL_VERSION)}, ssl_context=context,
                receive_bytes=64 * 1024, ping_interval=ping_s, max_message_size=1024 * 1024)
        except simple_websocket.ConnectionError as e:
            raise ControllerUnavailable(f"console {session_id}: the controller answered "
                                        f"{e.status_code}") from e
        except OSError as e:
            raise ControllerUnavailable(f"console {session_id}: {e}") from e

    def storage_settings(self) -> StorageSettings:
        """The region's storage backend; the Ceph key in it is kept in memory only."""
        try:
            r = self.http.get(self._node_url("storage"), timeout=30)
        except requests.RequestException as e:
            raise ControllerUnavailable(str(e)) from e
        self._check(r)
        return StorageSettings.model_validate_json(r.content)

    def xapi_settings(self) -> XapiSettings:
        """How this XCP-ng pool's agent reaches its pool; the password is kept in memory
        only. ControllerUnavailable while the controller is away."""
        try:
            r = self.http.get(self._node_url("xapi"), timeout=30)
        except requests.RequestException as e:
            raise ControllerUnavailable(str(e)) from e
        self._check(r)
        return XapiSettings.model_validate_json(r.content)

    def report(self, status: NodeStatus) -> None:
        try:
            r = self.http.post(self._node_url("status"), data=status.model_dump_json(),
                               headers={"Content-Type": "application/json"}, timeout=30)
        except requests.RequestException as e:
            raise ControllerUnavailable(str(e)) from e
        self._check(r)

    def image_chunks(self, image_id: str) -> Iterator[bytes]:
        """Stream an image file; a broken stream raises ControllerUnavailable."""
        try:
            with self.http.get(f"{self.base}/images/{image_id}/file", stream=True,
                               timeout=60) as r:
                self._check(r)
                yield from r.iter_content(CHUNK)
        except requests.RequestException as e:
            raise ControllerUnavailable(str(e)) from e

    def _check(self, r: requests.Response) -> None:
        """ProtocolMismatch when the controller speaks another protocol, NodeRemoved when it
        refuses this node as removed, Refused when this agent is the wrong kind for its
        node, ControllerUnavailable for any other error answer.
        Takes the report interval and poll wait the answer names."""
        mismatch = protocol_mismatch(r)
        if mismatch is not None:
            raise mismatch
        interval, wait = pace_from_headers(r.headers)
        self.report_interval_s = interval or self.report_interval_s
        self.poll_wait_s = wait or self.poll_wait_s
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = None
            if not isinstance(body, dict):
                raise ControllerUnavailable(f"{r.status_code} from controller: {r.text[:200]}")
            detail = str(body.get("detail", r.text[:200]))
            if r.status_code == 403 and str(body.get("type", "")).endswith("/" + NODE_REMOVED):
                raise NodeRemoved(detail)
            if r.status_code == 409 and str(body.get("type", "")).endswith("/" + WRONG_AGENT):
                raise Refused(detail)
            raise ControllerUnavailable(f"{r.status_code} from controller: {detail}")
