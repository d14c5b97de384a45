"""Fixtures of the integration tier."""

from tests.integration.libvirt_fixtures import domains, workdir
from tests.xapi_sim.fixtures import sim_pool, sim_pools

__all__ = ["domains", "sim_pool", "sim_pools", "workdir"]
