"""Controller settings from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.config import ControllerConfig


def test_disk_allocation_ratio_defaults_to_one_and_reads_the_environment(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("VAUBAN_DISK_ALLOCATION_RATIO", raising=False)
    assert ControllerConfig.from_env(data_dir=tmp_path).disk_allocation_ratio == 1.0
    monkeypatch.setenv("VAUBAN_DISK_ALLOCATION_RATIO", "1.5")
    assert ControllerConfig.from_env(data_dir=tmp_path).disk_allocation_ratio == 1.5


@pytest.mark.parametrize(("raw", "message"), [
    ("lots", "VAUBAN_DISK_ALLOCATION_RATIO must be a number, not 'lots'"),
    ("0", "disk_allocation_ratio must be a positive number, not 0.0"),
    ("-2", "disk_allocation_ratio must be a positive number, not -2.0"),
    ("inf", "disk_allocation_ratio must be a positive number, not inf"),
    ("nan", "disk_allocation_ratio must be a positive number, not nan"),
])
def test_a_bad_disk_allocation_ratio_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                raw: str, message: str) -> None:
    monkeypatch.setenv("VAUBAN_DISK_ALLOCATION_RATIO", raw)
    with pytest.raises(ValueError) as e:
        ControllerConfig.from_env(data_dir=tmp_path)
    assert str(e.value) == message


def test_the_controller_refuses_to_start_on_a_bad_ratio(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from controller.main import main

    monkeypatch.setenv("VAUBAN_DISK_ALLOCATION_RATIO", "0")
    assert main(["init", "--data-dir", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err == ("vauban-controller: settings: disk_allocation_ratio must "
                                       "be a positive number, not 0.0\n")
    assert not (tmp_path / "c").exists()


def test_several_workers_need_postgresql_and_share_out_the_connection_limits(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VAUBAN_WORKERS", "3")
    with pytest.raises(ValueError, match="more than one worker needs PostgreSQL"):
        ControllerConfig.from_env(data_dir=tmp_path)
    config = ControllerConfig.from_env(data_dir=tmp_path,
                                       database_url="postgresql+psycopg://vauban@/vauban",
                                       max_connections=10000, max_connections_per_source=256)
    limits = config.client_limits()
    assert (config.workers, limits.max_connections, limits.max_per_source) == (3, 3334, 86)
    monkeypatch.setenv("VAUBAN_WORKERS", "0")
    with pytest.raises(ValueError, match="workers must be a positive number, not 0"):
        ControllerConfig.from_env(data_dir=tmp_path)


def test_certificate_lifetimes_come_in_days_or_seconds(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    for var in ("NODE", "SERVER"):
        for unit in ("DAYS", "SECONDS"):
            monkeypatch.delenv(f"VAUBAN_{var}_CERT_{unit}", raising=False)
    default = ControllerConfig.from_env(data_dir=tmp_path)
    assert default.node_cert_lifetime_s == default.server_cert_lifetime_s == 90 * 86400
    monkeypatch.setenv("VAUBAN_NODE_CERT_DAYS", "30")
    monkeypatch.setenv("VAUBAN_SERVER_CERT_SECONDS", "60")
    config = ControllerConfig.from_env(data_dir=tmp_path)
    assert (config.node_cert_lifetime_s, config.server_cert_lifetime_s) == (30 * 86400, 60)


def test_the_server_certificate_renewal_fraction_is_a_setting(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("VAUBAN_SERVER_CERT_RENEW_FRACTION", raising=False)
    assert ControllerConfig.from_env(data_dir=tmp_path).server_cert_renew_fraction == \
        pytest.approx(1 / 3, abs=0.001)
    monkeypatch.setenv("VAUBAN_SERVER_CERT_RENEW_FRACTION", "0.8")
    assert ControllerConfig.from_env(data_dir=tmp_path).server_cert_renew_fraction == 0.8


@pytest.mark.parametrize(("env", "message"), [
    ({"VAUBAN_SERVER_CERT_RENEW_FRACTION": "0.95"},
     "server_cert_renew_fraction must be from 0.05 to 0.9, not 0.95"),
    ({"VAUBAN_SERVER_CERT_RENEW_FRACTION": "nan"},
     "server_cert_renew_fraction must be from 0.05 to 0.9, not nan"),
    ({"VAUBAN_NODE_CERT_DAYS": "1", "VAUBAN_NODE_CERT_SECONDS": "60"},
     "VAUBAN_NODE_CERT_DAYS and VAUBAN_NODE_CERT_SECONDS are both set; set one"),
    ({"VAUBAN_NODE_CERT_DAYS": "1.5"}, "VAUBAN_NODE_CERT_DAYS must be a whole number, not '1.5'"),
    ({"VAUBAN_SERVER_CERT_SECONDS": "59"},
     "server_cert_lifetime_s must be a whole number of seconds from 60 to 315360000 (the CA's "
     "own validity), not 59"),
    ({"VAUBAN_NODE_CERT_DAYS": "3651"}, "node_cert_lifetime_s must be a whole number of "
     "seconds from 60 to 315360000 (the CA's own validity), not 315446400"),
    ({"VAUBAN_NODE_CERT_DAYS": "0"}, "node_cert_lifetime_s must be a whole number"),
])
def test_a_bad_certificate_lifetime_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                              env: dict[str, str], message: str) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError) as e:
        ControllerConfig.from_env(data_dir=tmp_path)
    assert message in str(e.value)


def test_the_ceph_files_a_rollout_fetched_serve_where_no_cluster_is_configured(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("VAUBAN_CEPH_CONF", "VAUBAN_CEPH_KEYRING", "VAUBAN_CEPH_BOOTSTRAP_OSD_KEYRING",
                "VAUBAN_CEPH_CLIENT"):
        monkeypatch.delenv(var, raising=False)
    none = ControllerConfig.from_env(data_dir=tmp_path)
    assert (none.ceph_conf, none.ceph_keyring, none.ceph_bootstrap_osd_keyring) == \
        (None, None, None)
    folder = tmp_path / "ceph"
    assert none.ceph_dir == folder
    folder.mkdir()
    for name in ("ceph.conf", "ceph.client.vauban.keyring", "ceph.client.bootstrap-osd.keyring"):
        (folder / name).write_text("")
    fetched = ControllerConfig.from_env(data_dir=tmp_path)
    assert (fetched.ceph_conf, fetched.ceph_keyring, fetched.ceph_bootstrap_osd_keyring) == (
        folder / "ceph.conf", folder / "ceph.client.vauban.keyring",
        folder / "ceph.client.bootstrap-osd.keyring")
    # a keyring configured is kept; the conf configured takes none of the fetched files
    monkeypatch.setenv("VAUBAN_CEPH_KEYRING", str(tmp_path / "mine.keyring"))
    assert ControllerConfig.from_env(data_dir=tmp_path).ceph_keyring == tmp_path / "mine.keyring"
    monkeypatch.setenv("VAUBAN_CEPH_CONF", str(tmp_path / "other.conf"))
    other = ControllerConfig.from_env(data_dir=tmp_path)
    assert (other.ceph_conf, other.ceph_bootstrap_osd_keyring) == (tmp_path / "other.conf", None)


def test_session_durations_default_to_30_minutes_idle_and_12_hours_in_all(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("VAUBAN_SESSION_IDLE_S", "VAUBAN_SESSION_MAX_S"):
        monkeypatch.delenv(var, raising=False)
    limits = ControllerConfig.from_env(data_dir=tmp_path).session_limits()
    assert (limits.idle_s, limits.max_s) == (1800, 12 * 3600)
    monkeypatch.setenv("VAUBAN_SESSION_IDLE_S", "600")
    monkeypatch.setenv("VAUBAN_SESSION_MAX_S", "3600")
    limits = ControllerConfig.from_env(data_dir=tmp_path).session_limits()
    assert (limits.idle_s, limits.max_s) == (600, 3600)
    monkeypatch.setenv("VAUBAN_SESSION_IDLE_S", "0")
    with pytest.raises(ValueError, match="session_idle_s must be a positive number"):
        ControllerConfig.from_env(data_dir=tmp_path)


def test_fence_timing_defaults_hold_and_reach_the_nodes(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    from controller.storage_settings import build

    for var in ("VAUBAN_FENCE_AFTER", "VAUBAN_STORAGE_HEARTBEAT_INTERVAL",
                "VAUBAN_STORAGE_DOWN_AFTER", "VAUBAN_NODE_DOWN_AFTER"):
        monkeypatch.delenv(var, raising=False)
    config = ControllerConfig.from_env(data_dir=tmp_path, storage="rbd")
    assert (config.fence_after_s, config.storage_heartbeat_interval_s,
            config.storage_down_after_s, config.node_down_after_s) == (20.0, 2.0, 30.0, 30.0)
    conf, keyring = tmp_path / "ceph.conf", tmp_path / "keyring"
    conf.write_text("[global]\nfsid = f\nmon_host = 127.0.0.1:6789\n")
    keyring.write_text("[client.vauban]\n\tkey = AQBpc2x5AAAAABAAmFXcWxJ0EmYbOWgD3CmI0g==\n")
    monkeypatch.setenv("VAUBAN_FENCE_AFTER", "6")
    monkeypatch.setenv("VAUBAN_STORAGE_HEARTBEAT_INTERVAL", "1.5")
    config = ControllerConfig.from_env(data_dir=tmp_path, storage="rbd", ceph_conf=conf,
                                       ceph_keyring=keyring)
    rbd = build("rbd", conf, keyring, heartbeat_interval_s=config.storage_heartbeat_interval_s,
                fence_after_s=config.fence_after_s).rbd
    assert rbd is not None and (rbd.heartbeat_interval_s, rbd.fence_after_s) == (1.5, 6.0)


@pytest.mark.parametrize(("env", "message"), [
    ({"VAUBAN_FENCE_AFTER": "23"},
     "fence timing: fence_after_s (23) + storage heartbeat interval (2) + report interval "
     "(5) = 30 s must be less than the smaller of node_down_after_s (30) and "
     "storage_down_after_s (30): a node must stop its VMs before the controller counts it "
     "lost"),
    ({"VAUBAN_NODE_DOWN_AFTER": "15"},
     "fence timing: fence_after_s (20) + storage heartbeat interval (2) + report interval "
     "(5) = 27 s must be less than the smaller of node_down_after_s (15) and "
     "storage_down_after_s (30): a node must stop its VMs before the controller counts it "
     "lost"),
    ({"VAUBAN_STORAGE_DOWN_AFTER": "26.5"}, "= 27 s must be less than the smaller"),
    ({"VAUBAN_FENCE_AFTER": "0"}, "fence_after_s must be a positive number, not 0.0"),
    ({"VAUBAN_STORAGE_HEARTBEAT_INTERVAL": "nan"},
     "storage_heartbeat_interval_s must be a positive number, not nan"),
])
def test_fence_timing_that_could_restart_a_running_vm_is_refused(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str],
        message: str) -> None:
    for var in ("VAUBAN_FENCE_AFTER", "VAUBAN_STORAGE_HEARTBEAT_INTERVAL",
                "VAUBAN_STORAGE_DOWN_AFTER", "VAUBAN_NODE_DOWN_AFTER"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(ValueError) as e:
        ControllerConfig.from_env(data_dir=tmp_path, storage="rbd")
    assert message in str(e.value)


def test_fence_timing_is_not_checked_without_shared_storage(monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    monkeypatch.setenv("VAUBAN_NODE_DOWN_AFTER", "5")
    assert ControllerConfig.from_env(data_dir=tmp_path, storage="localfs").node_down_after_s == 5
