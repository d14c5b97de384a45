"""The node lab: Debian 12 nodes booted by systemd-nspawn on this machine, each in its
own network namespace on a private bridge, for multi-node tests, benchmarks and
`make lab`."""
