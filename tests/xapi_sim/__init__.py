"""A wire-level simulator of XAPI, the XCP-ng pool API (test code only).

It answers XML-RPC and JSON-RPC over HTTPS as xapi does (docs/design/xapi-plan.md §1 lists
the wire facts it reproduces and where each was read). Tests run it in a process of its
own (`process.SimProcess`, started by the `sim_pool`/`sim_pools` fixtures, stopped by
PID) and flip its faults through a unix control socket (`control.py`). Modules: `wire`
(encodings), `model` (objects, sessions, refs, fault switches), `events`
(event.from/inject), `api` (method dispatch, reads), `lifecycle` (VM power and fields,
the guest-running `Backend` seam), `devices` (VBD, VIF, VDI methods; the table of
changing methods), `tasks` (`Async.*`, task records), `server` (HTTPS listeners per
host, faults), `__main__` (the process), `disks` (VDI contents as sparse files, client
tasks), `http_import` (PUT /import_raw_vdi), `vhd` (a VHD reader), `console` (CONNECT
/console and the RFB server behind it).
"""
