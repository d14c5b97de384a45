"""XCP-ng pools over XAPI: pinned HTTPS transport, pool connection, event cache, errors."""
