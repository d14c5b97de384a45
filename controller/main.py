"""`vauban-controller`: serve the region API (TLS; node client certificates verified)."""

from __future__ import annotations

import argparse
import logging
import ssl
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from gunicorn.app.base import BaseApplication

from controller.api.auth import PeerCertMiddleware
from controller.app import create_app
from controller.bootstrap import hear_other_processes, open_region
from controller.config import ClientLimits, ControllerConfig
from controller.ha import failover
from controller.metrics import enable_multiprocess, metrics_dir, worker_exited
from controller.pki import RegionCA
from controller.secretbox import SecretError
from controller.services import maintenance
from controller.services.housekeeping import (
    EventUpkeep,
    Periodic,
    housekeeper,
    upkeep_consoles,
)
from controller.serving import limits_within_open_files
from controller.storage_settings import StorageConfigError

log = logging.getLogger(__name__)


class _Server(BaseApplication):
    """gunicorn with our settings: `workers` processes (change notices cross them through
    PostgreSQL, see controller.notices), one greenlet per connection (controller.serving)."""

    def __init__(self, config: ControllerConfig, options: dict[str, Any],
                 limits: ClientLimits) -> None:
        self.config = config
        self.options = options
        self.limits = limits
        # how often each worker looks whether the server certificate is due for renewal
        self.tls_check_s = min(300.0, max(1.0, config.server_cert_lifetime_s / 20))
        super().__init__()

    def tls_upkeep(self) -> None:
        """Renew the server certificate files when due (read by serving.BoundedGeventWorker)."""
        ca = RegionCA(self.config.pki_dir)
        if ca.renew_server_if_due(self.config.tls_names(),
                                  timedelta(seconds=self.config.server_cert_lifetime_s),
                                  fraction=self.config.server_cert_renew_fraction):
            log.info("renewed the server certificate: valid until %s",
                     ca.server_not_after().isoformat())

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        # opened here, in the worker, once gevent has patched the standard library: locks and
        # connection pools made before the patch would block every greenlet at once
        region = open_region(self.config)
        hear_other_processes(region)
        config = region.config
        housekeeper(region.sessions, timedelta(seconds=config.operation_silence_s),
                    datetime.now(UTC), event_upkeep=EventUpkeep(
                        config.node_down_after_s, config.events_keep_s,
                        config.events_keep_count)).start()
        # heard-of times of repeated heartbeats, written together once a second
        Periodic("heartbeats", 1.0, lambda: region.heartbeats.flush(region.sessions)).start()
        if region.storage_watch is not None:  # nodes' storage heartbeats, read as often
            watch = region.storage_watch          # as they are written
            Periodic("storage-heartbeats", config.storage_heartbeat_interval_s,
                     lambda: watch.refresh(region.reads)).start()
        # the region's size sets the agents' report interval; it changes slowly
        Periodic("pace", 30.0, lambda: region.pace.refresh(region.reads)).start()
        # lost nodes fenced, then their HA VMs restarted elsewhere (controller.ha.failover)
        if region.fencer is not None:
            fencer = region.fencer
            Periodic("failover", 2.0,
                     lambda: failover.tick(region.sessions, config, fencer)).start()
        # nodes in maintenance: their VMs moved away a few at a time
        Periodic("maintenance", 5.0,
                 lambda: maintenance.evacuate_all(region.sessions, config)).start()
        Periodic("consoles", 30.0,
                 lambda: upkeep_consoles(region.sessions, config.data_dir)).start()
        return PeerCertMiddleware(create_app(region))


def issue_scraper_cert(ca: RegionCA, name: str, out: Path,
                       lifetime: timedelta) -> tuple[Path, Path]:
    """A client certificate (CN `metrics:<name>`) and its key, written to `out` (the key
    readable by its owner only): the agents' metrics listeners admit it; the controller's
    API does not (it is no node's, and users present tokens)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    from controller.pki import key_pem, new_key

    key = new_key()
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"metrics:{name}")])).sign(key, hashes.SHA256())
    issued = ca.sign_node_csr(csr.public_bytes(serialization.Encoding.PEM).decode(),
                              f"metrics:{name}", lifetime)
    out.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = out / f"{name}.key", out / f"{name}.pem"
    key_path.touch(mode=0o600)
    key_path.write_bytes(key_pem(key))
    cert_path.write_bytes(issued.pem)
    return cert_path, key_path


def _worker_exited(_server: Any, worker: Any) -> None:
    """gunicorn's child_exit hook: the worker's live gauges stop counting."""
    worker_exited(worker.pid)


def serve(config: ControllerConfig, pidfile: str | None = None) -> None:
    region = open_region(config)  # refuse bad settings, migrate and make the CA before serving
    region.engine.dispose()
    # the workers' metrics meet in files there (controller.metrics), those of a past run gone
    enable_multiprocess(metrics_dir(config.data_dir))
    limits = limits_within_open_files(config.client_limits())
    options = {
        "bind": f"[{config.host}]:{config.port}" if ":" in config.host
        else f"{config.host}:{config.port}",
        "workers": config.workers,
        "worker_class": "controller.serving.BoundedGeventWorker",
        "worker_connections": limits.max_connections,
        # the deadline for a request's line and headers, and for an idle keep-alive connection
        "keepalive": max(1, round(limits.header_s)),
        "timeout": 120,
        "graceful_timeout": 5,
        "certfile": str(region.ca.server_cert_path),
        "keyfile": str(region.ca.server_key_path),
        "ca_certs": str(region.ca.cert_path),
        # a client certificate is optional (operators use tokens) but verified when sent
        "cert_reqs": ssl.CERT_OPTIONAL,
        "accesslog": "-",
        # the path without its query string: a query may carry a secret
        "access_log_format": '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss',
        "logger_class": "controller.serving.RedactingLogger",  # no console ticket logged
        "pidfile": pidfile,
        # its shared default socket would make controllers on one host fight over it
        "control_socket_disable": True,
        "child_exit": _worker_exited,
    }
    _Server(config, options, limits).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vauban-controller", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="run the API server in the foreground")
    run.add_argument("--data-dir", help="state directory (env VAUBAN_DATA_DIR)")
    run.add_argument("--database-url", help="SQLAlchemy URL (env VAUBAN_DATABASE_URL)")
    run.add_argument("--host", help="address to listen on (env VAUBAN_HOST)")
    run.add_argument("--port", type=int, help="port (env VAUBAN_PORT)")
    run.add_argument("--pidfile")
    init = sub.add_parser("init", help="create database, CA and admin, then exit")
    init.add_argument("--data-dir")
    init.add_argument("--database-url")
    scraper = sub.add_parser("metrics-client-cert", help="issue a client certificate from the "
                             "region CA for Prometheus to scrape the agents (docs/metrics.md)")
    scraper.add_argument("--data-dir")
    scraper.add_argument("--name", default="prometheus", help="who scrapes (in the CN)")
    scraper.add_argument("--out", required=True, help="folder for <name>.pem and <name>.key")
    scraper.add_argument("--days", type=int, default=365)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = ControllerConfig.from_env(
            data_dir=Path(args.data_dir).resolve() if args.data_dir else None,
            database_url=getattr(args, "database_url", None),
            host=getattr(args, "host", None),
            port=getattr(args, "port", None),
        )
    except ValueError as e:  # a VAUBAN_* variable out of range: say which, no traceback
        print(f"vauban-controller: settings: {e}", file=sys.stderr)
        return 2
    if args.command == "metrics-client-cert":
        cert, key = issue_scraper_cert(RegionCA(config.pki_dir), args.name, Path(args.out),
                                       timedelta(days=args.days))
        print(f"certificate {cert}, key {key}")
        return 0
    try:
        if args.command == "init":
            open_region(config)
            return 0
        serve(config, args.pidfile)
    except StorageConfigError as e:
        print(f"vauban-controller: storage settings: {e}", file=sys.stderr)
        return 2
    except SecretError as e:  # the region key, or a secret it does not open: no traceback
        print(f"vauban-controller: secrets: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
