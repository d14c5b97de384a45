"""Ceph RBD storage: the driver (`driver.RbdDriver`) and a throwaway cluster (`minicluster`)."""
