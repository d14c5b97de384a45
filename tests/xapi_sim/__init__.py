"""A wire-level simulator of XAPI, the XCP-ng pool API (test code only).

It answers XML-RPC and JSON-RPC over HTTPS as xapi does: see docs/design/xapi-plan.md §1
for the wire facts it reproduces and where each was read.
"""
