"""Fixtures of the integration tier."""

from tests.integration.libvirt_fixtures import domains, workdir
from tests.xapi_sim.fixtures import sim_pool, sim_pools, xen_dom0, xl_backend

__all__ = ["domains", "sim_pool", "sim_pools", "workdir", "xen_dom0", "xl_backend"]
