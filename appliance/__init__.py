"""The appliance ISO's own programs: the unattended installer, the first boot and the
console banner. They run on the live system and on the node it installs."""
