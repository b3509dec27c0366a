"""pytest-kvm: prove KVM features work on real machines."""

__version__ = "0.1.0"
