"""Fixtures of the integration tier."""

from tests.integration.libvirt_fixtures import domains, workdir

__all__ = ["domains", "workdir"]
