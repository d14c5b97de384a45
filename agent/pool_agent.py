"""`vauban-agent run` for an XCP-ng pool (`hypervisor = "xapi"`): the agent of a pool node.

It runs beside the pool (on a controller host, one agent per pool), never in dom0: it
reads how to reach the pool from the controller over mutual TLS (the password stays in
its memory), keeps one event loop on the pool, and drives the pool's VMs and disks
through XAPI. Nothing of the machine it runs on is reported or touched: no KVM probe,
hardware, GPUs, networks or firewall.
"""

from __future__ import annotations

import threading

from agent.client import ControllerClient
from agent.config import AgentConfig, NodeIdentity
from agent.daemon import Agent
from agent.drivers.registry import load_hypervisor, load_storage
from agent.drivers.storage.xapi import XapiStorage
from agent.drivers.xapi.link import PoolLink
from agent.drivers.xapi.tasks import PoolOps
from agent.protocol import StorageSettings, XapiSettings
from hardware.kvmprobe import KvmProbe

NOT_KVM = KvmProbe(device=False, usable=False,
                   detail="an XCP-ng pool: its hosts run Xen, driven over XAPI")


def pool_agent(config: AgentConfig, identity: NodeIdentity, client: ControllerClient,
               settings: XapiSettings, stopping: threading.Event) -> tuple[Agent, PoolLink]:
    """The agent of the pool `settings` reach, and its link (started: its event loop runs;
    the caller stops it after the agent)."""
    link = PoolLink(settings, identity.name, refresh=client.xapi_settings)
    link.start()
    try:
        ops = PoolOps(link.new_client(), link.cache)  # one client for the drivers' calls
        storage = load_storage("xapi", ops=ops, new_client=link.new_client,
                               scratch_dir=config.data_dir / "scratch",
                               sr_uuid=settings.sr_uuid)
        assert isinstance(storage, XapiStorage)
        # a VM's seed goes into a VDI of the storage's SR, as its images do
        hypervisor = load_hypervisor("xapi", ops=ops, import_file=storage.import_file,
                                     **({"template": settings.template}
                                        if settings.template else {}))
        agent = Agent(config, identity, client, hypervisor, storage, NOT_KVM, "xapi",
                      stopping=stopping, settings=StorageSettings(driver="xapi"),
                      pool=link.info)
    except BaseException:
        link.stop()
        raise
    return agent, link
