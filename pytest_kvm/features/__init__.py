"""Features: nested hosts, vfio passthrough, SR-IOV, migration."""
