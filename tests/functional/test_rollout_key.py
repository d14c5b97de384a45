"""A rollout batch run by the real ansible-runner and ansible-playbook: the fleet key
reaches the run's ssh-agent, and nothing the run leaves in the job's folder holds it.

The site playbook here runs on the controller itself (connection: local) and lists the
keys of its ssh-agent, so no server is needed."""

from __future__ import annotations

import base64
import dataclasses
import stat
from pathlib import Path

from sqlalchemy import select

from controller import __version__
from controller.db.models import FleetHost, RolloutHost
from controller.fleet import jobs
from controller.fleet.keys import ensure_fleet_key, fleet_private_key
from controller.fleet.worker import _run_batch
from controller.region import Region

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
SITE = """\
- hosts: all
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  tasks:
    - name: the keys of the run's ssh-agent
      ansible.builtin.command: ssh-add -L
      register: agent
      changed_when: false
    - name: show them
      ansible.builtin.debug:
        var: agent.stdout_lines
"""


def _local_playbooks(region: Region, tmp_path: Path) -> Region:
    playbooks = tmp_path / "playbooks"
    playbooks.mkdir()
    (playbooks / "site.yml").write_text(SITE)
    (playbooks / "ansible.cfg").write_text("[defaults]\nstdout_callback = default\n")
    return dataclasses.replace(region, config=dataclasses.replace(
        region.config, playbooks_dir=playbooks))


def test_a_rollout_gives_the_fleet_key_to_its_ssh_agent_only(
        region: Region, tmp_path: Path) -> None:
    local = _local_playbooks(region, tmp_path)
    config = local.config
    with local.sessions() as db, db.begin():
        db.add(FleetHost(name="n1", address="127.0.0.1", host_key=HOST_KEY, role="node",
                         created_by="admin"))
    config.releases.mkdir(parents=True, exist_ok=True)
    (config.releases / f"vauban-{__version__}-wheels.tar").write_bytes(b"")
    with local.sessions() as db, db.begin():
        job_id = jobs.start(db, config, "admin", None, [], None, False).id
    folder = config.rollouts_dir / job_id
    folder.mkdir(parents=True)

    public = ensure_fleet_key(config.data_dir)
    _run_batch(local, job_id, folder, ["n1"], 0, [])

    with local.reads() as db:
        row = db.scalars(select(RolloutHost).where(RolloutHost.job_id == job_id)).one()
    assert row.state == "ok", row.message
    # the agent held the fleet key: its public half is what ssh-add listed
    assert public.split()[1] in (folder / "ansible.log").read_text()
    pem = fleet_private_key(config.data_dir)
    assert_nothing_holds(folder, [pem, *pem.splitlines()[1:-1],
                                  base64.b64encode(pem.encode()).decode()])


def assert_nothing_holds(folder: Path, secrets: list[str]) -> None:
    """No file under `folder` holds any of `secrets`, and no FIFO is left there."""
    for path in folder.rglob("*"):
        mode = path.lstat().st_mode
        assert not stat.S_ISFIFO(mode), f"{path} is a FIFO left behind"
        if stat.S_ISREG(mode):
            text = path.read_text(errors="replace")
            for secret in secrets:
                assert secret not in text, f"{path} holds a secret"
