"""Fixtures of the integration tier."""

from tests.integration.ceph_fixtures import ceph_admin, ceph_cluster, ceph_minicluster

__all__ = ["ceph_admin", "ceph_cluster", "ceph_minicluster"]
