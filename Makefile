# Vauban: `make up` starts an all-in-one region, `make test` runs the whole suite.
# Both install what they need on a fresh Debian 12 machine (run as root).

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
VAR := var
DEBIAN_PACKAGES := python3 python3-venv python3-dev gcc pkg-config \
	libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev \
	qemu-system-x86 qemu-utils qemu-block-extra \
	busybox-static syslinux mtools dosfstools kmod cpio \
	postgresql curl iproute2 cryptsetup-bin iputils-ping nftables python3-nftables iperf3 pci.ids pciutils \
	debootstrap e2fsprogs systemd-container openssh-client chromium fonts-dejavu-core \
	fdisk squashfs-tools xorriso grub-pc-bin grub-efi-amd64-bin grub-common ovmf socat \
	openipmi ipmitool \
	prometheus
# with their recommends: the always-on mgr modules import some of them
CEPH_PACKAGES := ceph-mon ceph-mgr ceph-osd ceph-common python3-rados python3-rbd
TESTGUEST := $(VAR)/images/testguest.raw
# make up STORAGE=ceph: VM disks and volumes on a single-node Ceph cluster under var/ceph
STORAGE ?= localfs

.PHONY: up down test deps venv xo-client image image-debian lint unit bench clean lab lab-down dist iso ui-vendor screenshots

up: deps image
	$(PY) -m agent.hostprep
	$(PY) -m controller.allinone up --root $(VAR) --image $(TESTGUEST) --storage $(STORAGE)

down:
	@[ -x $(PY) ] && $(PY) -m controller.allinone down --root $(VAR) || true

# the vauban wheel, and beside it every wheel it needs: nodes install offline from these.
# Its files are dated by the last commit, so the same checkout gives the same wheel (and
# `make iso` the same ISO, from its cache)
DIST := dist
dist: venv
	rm -rf $(DIST)
	SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct 2>/dev/null || echo 315532800) \
		$(PY) -m pip wheel -q --disable-pip-version-check --no-deps -w $(DIST) .
	$(PY) -m pip wheel -q --disable-pip-version-check -w $(DIST)/wheelhouse "$$(ls $(DIST)/vauban-*.whl)[controller]"
	tar -C $(DIST)/wheelhouse -cf $(DIST)/$$(basename $(DIST)/vauban-*.whl .whl | cut -d- -f1-2)-wheels.tar .
	@ls $(DIST)/vauban-*

# the appliance ISO (iso/README.md): its Debian base is cached by input hash outside the
# checkout, so only the first build downloads packages
iso: deps dist
	$(PY) -m iso.build --out $(DIST)/iso --wheels $$(ls $(DIST)/vauban-*-wheels.tar)

# make lab NODES=3: Debian nodes booted by systemd-nspawn on a private bridge (lab/), added
# to a controller on this machine and rolled out to with the playbooks
NODES ?= 3
lab: deps
	$(PY) -m lab up --nodes $(NODES) --state $(VAR)/lab --region

lab-down:
	@[ -x $(PY) ] && $(PY) -m lab down --state $(VAR)/lab || true

test: deps image xo-client
	$(PY) -m ruff check agent appliance controller hardware images iso lab tests bench ui
	$(PY) -m mypy
	cd playbooks && ../$(PY) -m ansiblelint --offline -q site.yml
	$(PY) -m tests.suite

# the web UI's front-end packages, from the npm registry (pinned by ui/package-lock.json),
# into controller/ui/static/vendor: run after changing ui/package.json, commit the result
ui-vendor:
	python3 ui/vendor.py

# pictures of the web UI's main pages for docs/screenshots (and the README), taken in
# Chromium from a throwaway region with a few demonstration VMs
screenshots: deps image
	$(PY) -m agent.hostprep
	$(PY) -m ui.screenshots --out docs/screenshots --image $(TESTGUEST)

unit: venv
	$(PY) -m pytest -q tests/unit

lint: venv
	$(PY) -m ruff check agent appliance controller hardware images iso lab tests bench ui
	$(PY) -m mypy
	cd playbooks && ../$(PY) -m ansiblelint --offline -q site.yml

bench: deps image
	$(PY) -m agent.hostprep
	$(PY) bench/provision.py

deps: $(VAR)/.apt-done venv

# Xen Orchestra's XAPI client (pinned by its package-lock.json), the simulator's cross-check;
# Debian's nodejs and npm only where no npm is there (a NodeSource nodejs conflicts with npm)
XO_CLIENT := tests/xapi_sim/xo/node_modules/.package-lock.json
xo-client: $(XO_CLIENT)

$(XO_CLIENT): tests/xapi_sim/xo/package-lock.json $(VAR)/.apt-done
	command -v npm >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs npm
	cd tests/xapi_sim/xo && npm ci --prefer-offline --no-audit --no-fund --loglevel=error

# apt runs again only when the package list changes
$(VAR)/.apt-done: Makefile
	mkdir -p $(VAR)
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(DEBIAN_PACKAGES)
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(CEPH_PACKAGES)
	touch $@

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(VAR)/.apt-done
	[ -x $(PY) ] || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[controller,test,bench]'
	touch $@

# the builder keeps its own stamp of every input and returns at once when nothing changed
image: venv
	$(PY) -m images.testguest.build --out $(TESTGUEST) --cache $(VAR)/cache/testguest

# Debian 12 cloud image (cloud-init, qemu-guest-agent), cached by input hash outside the checkout
image-debian: deps
	mkdir -p $(VAR)/log
	$(PY) -m images.debian --out $(VAR)/images/debian-12.qcow2 --log $(VAR)/log/image-debian.log

clean: down
	rm -rf $(VAR)/cache $(VAR)/images
