"""The appliance ISO builder (`make iso`): Debian base and Vauban layers, GRUB, SBOM."""
