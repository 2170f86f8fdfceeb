"""The ground floor of tm_gym: shared types with no Numba, no environments and no hardware."""
