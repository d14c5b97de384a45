"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask.testing import FlaskClient
from sqlalchemy import inspect, select, text

from controller.db.migrate import migrate
from controller.db.models import (
    Base,
    Event,
    Image,
    Instance,
    Network,
    Port,
    Project,
    RoleBinding,
    SecurityGroup,
    User,
)
from controller.region import Region
from tests.functional.helpers import RAW_IMAGE, Api


def test_migrations_match_the_models(region: Region) -> None:
    with region.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_a_region_from_before_projects_moves_into_default_and_its_users_become_admins(
        region: Region, client: FlaskClient) -> None:
    api = Api(client, region)
    api.join_node("n1")
    assert api.import_image("base", RAW_IMAGE).status_code == 201
    assert api.post("/api/v1/networks", json={
        "name": "lan", "kind": "tenant", "subnets": [{"cidr": "10.0.0.0/24"}]}).status_code == 201
    assert api.post("/api/v1/networks", json={
        "name": "pub", "kind": "provider", "vlan": 7, "physical": "eth1"}).status_code == 201
    assert api.post("/api/v1/instances", json={
        "name": "web", "image": "base", "vcpus": 1, "memory_mib": 128,
        "networks": ["lan"]}).status_code == 202
    migrate(region.engine, "0016", down=True)  # as the region was before projects
    with region.engine.begin() as conn:
        conn.execute(text("INSERT INTO users (id, name, password_hash, created_at) VALUES "
                          "('u-old', 'olduser', 'x', :now)"), {"now": datetime.now(UTC)})

    migrate(region.engine, "head")

    with region.reads() as db:
        default = db.scalar(select(Project.id).where(Project.name == "default"))
        assert [db.scalar(select(Project.name).where(Project.id == p)) for p in
                db.scalars(select(Instance.project_id))] == ["default"]
        assert {n.name: n.project_id for n in db.scalars(select(Network))} == {
            "lan": default, "pub": None}  # a provider network stays shared
        assert set(db.scalars(select(SecurityGroup.project_id))) == {default}
        assert set(db.scalars(select(Port.project_id))) == {default}
        assert list(db.scalars(select(Image.project_id))) == [None]  # shared, as before
        roles = {(u, r) for u, r in db.execute(select(User.name, RoleBinding.role).join(
            RoleBinding, RoleBinding.user_id == User.id))}
        assert roles == {("admin", "region-admin"), ("olduser", "region-admin")}
    assert api.get("/api/v1/instances/web").json["project"] == "default"  # type: ignore[index]


def test_the_event_log_goes_and_comes_back_with_its_migration(region: Region,
                                                              client: FlaskClient) -> None:
    api = Api(client, region)
    assert api.post("/api/v1/security-groups", json={"name": "web"}).status_code == 201
    migrate(region.engine, "0020", down=True)  # as the region was before the event log
    with region.engine.connect() as conn:
        assert "events" not in inspect(conn).get_table_names()
    migrate(region.engine, "head")
    assert api.post("/api/v1/security-groups", json={"name": "db"}).status_code == 201
    with region.reads() as db:
        assert [e.object_name for e in db.scalars(select(Event))] == ["db"]
