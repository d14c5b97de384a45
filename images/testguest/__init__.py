"""The Vauban test guest: a tiny bootable disk image built only from Debian packages.

`python -m images.testguest.build` makes it; see `images/testguest/build.py`.
The guest's behaviour (serial-console markers, NoCloud seed handling, ACPI
power-off) is in `images/testguest/init.sh`.
"""
